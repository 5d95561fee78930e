import pytest
import torch
from torch import nn

from mdctr.adapters.layer import MLoRALinear, RoutingContext
from mdctr.adapters.model import domain_parameter_names

NAMES = ["a", "b", "c"]


def make_layer(alpha=4, lora_rank=None, seed=0, in_features=10, domains=NAMES):
    torch.manual_seed(seed)
    ctx = RoutingContext(NAMES)
    layer = MLoRALinear.from_linear(nn.Linear(in_features, 8), ctx, domains, alpha=alpha, lora_rank=lora_rank)
    return ctx, layer


def grad_of(layer, part, domain):
    """The gradient of ``domain``'s ``part`` (0: A, 1: B, 2: bias): its row of its bank's."""
    k, j = layer.slots[domain]
    g = layer.bank(k)[part].grad
    return None if g is None else g[j]


def randomise(layer):
    randomise_domains(layer, NAMES)


def randomise_domains(layer, domains):
    with torch.no_grad():
        for d in domains:
            layer.lora_B[d].normal_()
            layer.lora_bias[d].normal_()


def test_fresh_adapters_change_nothing_and_share_base_weights():
    base = nn.Linear(10, 8)
    ctx = RoutingContext(NAMES)
    layer = MLoRALinear.from_linear(base, ctx, NAMES, alpha=4)
    assert layer.weight is base.weight and layer.bias is base.bias
    x = torch.randn(32, 10)
    # one domain, or rows grouped by domain (training batches): the plain layer's exact bits
    for domain in (torch.full((32,), 1), torch.randint(0, 3, (32,)).sort().values):
        ctx.set(domain)
        assert torch.equal(layer(x), base(x))
    with torch.no_grad():
        merged = torch.addmm(layer.weight, layer.lora_B["a"].t(), layer.lora_A["a"].t())
    assert torch.equal(merged, layer.weight)
    # an unsorted mixed batch: its rows are gathered into a new tensor, and BLAS's bits depend
    # on where rows sit in memory (the same GEMM on a copied slice differs in the last bit),
    # so the same math agrees to float rounding
    shuffled = torch.randint(0, 3, (32,))
    ctx.set(shuffled)
    torch.testing.assert_close(layer(x), base(x), rtol=0, atol=1e-6)
    assert set(layer.state_dict()) >= {"weight", "bias", "lora_A.a", "lora_B.c", "lora_bias.b"}


def test_rank_rule_and_override():
    _, layer = make_layer(alpha=4)
    assert layer.ranks == {"a": 2, "b": 2, "c": 2}  # max(8 // 4, 1)
    _, layer = make_layer(alpha=64)
    assert layer.ranks["a"] == 1
    _, layer = make_layer(lora_rank=5)
    assert layer.lora_A["a"].shape == (10, 5) and layer.lora_B["a"].shape == (5, 8)


def test_mixed_batch_matches_per_example_formula(in_features=10):
    ctx, layer = make_layer(in_features=in_features)
    randomise(layer)
    x = torch.randn(50, in_features)
    domain = torch.randint(0, 3, (50,))
    ctx.set(domain)
    out = layer(x)
    for i in range(50):
        d = NAMES[int(domain[i])]
        ref = x[i] @ layer.weight.T + layer.bias + x[i] @ layer.lora_A[d] @ layer.lora_B[d] + layer.lora_bias[d]
        torch.testing.assert_close(out[i], ref, rtol=1e-5, atol=1e-5)


def test_single_domain_fast_path_equals_mixed_path():
    ctx, layer = make_layer()
    randomise(layer)
    x = torch.randn(20, 10)
    ctx.set(torch.full((20,), 1))
    assert ctx.routing.single == 1
    fast = layer(x)
    mixed_x = torch.cat([x, torch.randn(5, 10)])
    ctx.set(torch.cat([torch.full((20,), 1), torch.zeros(5, dtype=torch.long)]))
    assert ctx.routing.single is None
    torch.testing.assert_close(layer(mixed_x)[:20], fast, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("domain", [[0, 0, 2], [2, 2, 2]])
def test_gradients_reach_only_the_domains_in_the_batch(domain):
    """Absent domains get exact zeros, not None: every data-parallel rank then uses the same
    parameters (DDP with a static graph) whatever domains its batch holds."""
    ctx, layer = make_layer()
    ctx.set(torch.tensor(domain))
    layer(torch.randn(3, 10)).sum().backward()
    assert grad_of(layer, 1, "c").abs().sum() > 0
    assert (grad_of(layer, 1, "a").abs().sum() > 0) == (0 in domain)
    for name in {"a", "b", "c"} - {NAMES[d] for d in domain}:
        for part in range(3):
            assert grad_of(layer, part, name) is not None and not grad_of(layer, part, name).any()


def test_merge_matches_unmerged_and_unmerge_restores_exactly():
    ctx, layer = make_layer()
    randomise(layer)
    w0, b0 = layer.weight.detach().clone(), layer.bias.detach().clone()
    x = torch.randn(16, 10)
    ctx.set(torch.full((16,), 2))
    adapted = layer(x)
    layer.merge("c")
    torch.testing.assert_close(layer(x), adapted, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="serves only that domain"):
        ctx.set(torch.full((16,), 0))
        layer(x)
    layer.unmerge()
    assert torch.equal(layer.weight, w0) and torch.equal(layer.bias, b0)


def test_merge_refuses_non_finite_weights():
    ctx, layer = make_layer()
    w0 = layer.weight.detach().clone()
    with torch.no_grad():
        layer.lora_B["a"].fill_(float("inf"))
    with pytest.raises(ValueError, match="non-finite"):
        layer.merge("a")
    assert torch.equal(layer.weight, w0) and layer.merged is None


def test_unknown_domain_index_is_an_error():
    ctx, _ = make_layer()
    with pytest.raises(ValueError, match="domain index 3 has no name"):
        ctx.set(torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="non-negative integers \\(got -1\\)"):
        ctx.set(torch.tensor([2, 0, -1, 1]))
    with pytest.raises(ValueError, match="must be integers"):
        ctx.set(torch.tensor([0.0, 1.0]))


def test_routing_of_grouped_single_and_unsorted_batches():
    ctx, _ = make_layer()
    ctx.set(torch.tensor([0, 0, 2, 2, 2]))  # grouped: contiguous slices
    assert ctx.routing.order is None and ctx.routing.counts == [2, 0, 3]
    ctx.set(torch.tensor([1, 1]))
    assert ctx.routing.single == 1
    ctx.set(torch.tensor([2, 0, 2, 1, 0]))  # unsorted: one stable sort, shared by the layers
    assert ctx.routing.counts == [2, 1, 2]
    assert ctx.routing.order.tolist() == [1, 4, 3, 0, 2] and ctx.routing.inverse[ctx.routing.order].tolist() == list(range(5))
    ctx.set(torch.tensor([0, 1, 0]))  # ascending runs only if each domain is one run
    assert ctx.routing.order is not None and ctx.routing.counts == [2, 1, 0]


@pytest.mark.parametrize("grouped", [True, False])
@pytest.mark.parametrize("mixed_ranks", [False, True])
def test_grouped_gradients_match_the_per_example_formula(grouped, mixed_ranks, in_features=10):
    ctx, layer = make_layer(in_features=in_features, domains=["c", "a"] if mixed_ranks else NAMES)
    if mixed_ranks:  # a domain onboarded later with its own rank, in a bank of its own; the
        layer.add_adapter("b", lora_rank=3)  # first bank holds c before a, and their rows are not adjacent
    randomise(layer)
    x = torch.randn(40, in_features, requires_grad=True)
    domain = torch.randint(0, 3, (40,))
    if grouped:
        domain = domain.sort().values
    ctx.set(domain)
    weights = torch.randn(40, 8)
    (layer(x) * weights).sum().backward()
    # reference: the formula row by row, with plain autograd
    params = {n: p.detach().clone().requires_grad_(True) for n, p in layer.state_dict().items()}
    x2 = x.detach().clone().requires_grad_(True)
    rows = [x2[i] @ params["weight"].T + params["bias"]
            + x2[i] @ params[f"lora_A.{NAMES[d]}"] @ params[f"lora_B.{NAMES[d]}"] + params[f"lora_bias.{NAMES[d]}"]
            for i, d in enumerate(domain.tolist())]
    (torch.stack(rows) * weights).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.weight.grad, params["weight"].grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.bias.grad, params["bias"].grad, rtol=1e-5, atol=1e-5)
    for d in NAMES:
        for part, name in enumerate(("lora_A", "lora_B", "lora_bias")):
            torch.testing.assert_close(grad_of(layer, part, d), params[f"{name}.{d}"].grad, rtol=1e-5, atol=1e-5,
                                       msg=f"{name}.{d}")


def test_frozen_adapters_get_no_gradient_and_missing_adapters_add_nothing(in_features=10):
    ctx, layer = make_layer(in_features=in_features, domains=["a"])
    layer.add_adapter("b", alpha=4)  # a bank of its own; domain c has no adapter
    randomise_domains(layer, ["a", "b"])
    a_bank = layer.bank(layer.slots["a"][0])
    a_bank[0].requires_grad_(False)
    a_bank[1].requires_grad_(False)
    x = torch.randn(9, in_features)
    ctx.set(torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2]))
    out = layer(x)
    torch.testing.assert_close(out[6:], nn.functional.linear(x[6:], layer.weight, layer.bias))
    out.sum().backward()
    assert grad_of(layer, 0, "a") is None and grad_of(layer, 1, "a") is None
    assert grad_of(layer, 2, "a") is not None and grad_of(layer, 0, "b").abs().sum() > 0


def test_a_domains_outputs_do_not_depend_on_the_other_domains_adapters():
    """Onboarding promises bit-identical predictions for the other domains: their merged
    weights and GEMMs must not change when a domain gains an adapter or joins the batch."""
    ctx, layer = make_layer(domains=["a", "b"])
    randomise_domains(layer, ["a", "b"])
    x = torch.randn(30, 10)
    domain = torch.tensor([0] * 10 + [1] * 10 + [2] * 10)
    ctx.set(domain)
    before = layer(x)[:20].detach()
    ctx.set(domain[:20])
    assert torch.equal(layer(x[:20]).detach(), before)
    layer.add_adapter("c", lora_rank=3)  # another rank: the merges take two batched calls
    randomise_one = layer.lora_B["c"]
    with torch.no_grad():
        randomise_one.normal_()
    ctx.set(domain)
    after = layer(x).detach()
    assert torch.equal(after[:20], before)
    assert not torch.allclose(after[20:], nn.functional.linear(x[20:], layer.weight, layer.bias))


def test_adapters_are_stacked_in_banks_and_checkpointed_by_domain():
    """A step handles one tensor per bank and part; the state dict has one entry per domain
    and part, so a checkpoint loads into any grouping of the domains into banks."""
    _, joint = make_layer(domains=NAMES)
    randomise(joint)
    assert [n for n, _ in joint.named_parameters()] == ["weight", "bias", "lora_A_0", "lora_B_0", "lora_bias_0"]
    assert joint.bank(0)[0].shape == (3, 10, 2) and joint.banks == [NAMES]
    state = joint.state_dict()
    assert sorted(k for k in state if k.startswith("lora_")) == sorted(
        f"{part}.{d}" for part in ("lora_A", "lora_B", "lora_bias") for d in NAMES)
    assert torch.equal(state["lora_B.b"], joint.bank(0)[1][1])
    # another grouping: a and c together, b onboarded on its own with the same rank
    _, split = make_layer(seed=1, domains=["c", "a"])
    split.add_adapter("b", alpha=4)
    assert split.banks == [["c", "a"], ["b"]]
    split.load_state_dict(state)
    for part in ("lora_A", "lora_B", "lora_bias"):
        for d in NAMES:
            assert torch.equal(getattr(split, part)[d], getattr(joint, part)[d]), (part, d)
    # a domain the checkpoint lacks is missing, one the layer lacks is unexpected, a wrong shape an error
    _, other = make_layer(domains=["a", "b"])
    result = other.load_state_dict({k: v for k, v in state.items() if not k.endswith(".b")}, strict=False)
    assert set(result.missing_keys) == {"lora_A.b", "lora_B.b", "lora_bias.b"}
    assert set(result.unexpected_keys) == {"lora_A.c", "lora_B.c", "lora_bias.c"}
    _, wide = make_layer(lora_rank=3)
    with pytest.raises(RuntimeError, match="size mismatch for lora_A.a"):
        wide.load_state_dict(state)


def test_a_domain_joins_a_layer_once():
    _, layer = make_layer(domains=["a"])
    with pytest.raises(ValueError, match="'a' already has an adapter"):
        layer.add_adapter("a")
    with pytest.raises(ValueError, match="'b' already has an adapter"):
        layer.add_adapters(["b", "b"])


def test_a_domain_trains_alone_only_in_a_bank_of_its_own():
    """Fine-tuning trains the parameters holding one domain's adapter and nothing else."""
    _, layer = make_layer(domains=["a", "b"])
    layer.add_adapter("c", alpha=4)
    model = nn.Sequential(layer)
    assert domain_parameter_names(model, "c") == {"0.lora_A_1", "0.lora_B_1", "0.lora_bias_1"}
    with pytest.raises(ValueError, match=r"'a' shares its adapter bank with \['a', 'b'\]"):
        domain_parameter_names(model, "a")


def test_under_bfloat16_autocast_the_routed_layer_runs_float32():
    """``train.precision: bfloat16``: the routed kernels are float32, so an adapted layer
    steps out of autocast (a bfloat16 input is widened) and computes what it computes without
    it; its gradients reach the bfloat16 input."""
    ctx, layer = make_layer()
    randomise(layer)
    x = torch.randn(24, 10)
    ctx.set(torch.randint(0, 3, (24,)).sort().values)
    plain = layer(x)
    xb = x.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(xb)
        assert nn.Linear(10, 8)(x).dtype == torch.bfloat16  # autocast is on around the layer
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, layer(xb.detach().float()), rtol=0, atol=0)
    torch.testing.assert_close(out, plain, rtol=0.02, atol=0.02)  # x rounded to bfloat16 only
    out.sum().backward()
    assert xb.grad is not None and xb.grad.dtype == torch.bfloat16
    assert grad_of(layer, 1, "a") is not None
