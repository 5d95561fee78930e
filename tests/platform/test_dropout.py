import pytest
import torch
from torch.nn import functional as F

from mdctr.core import native
from mdctr.platform.dropout import Dropout, hash_dropout
from mdctr.platform.towers import build_tower


def test_the_kernel_is_built():
    assert native.status() == "compiled"


@pytest.mark.parametrize("p", [0.05, 0.124, 0.5, 0.9])
def test_keeps_each_element_with_probability_one_minus_p_and_scales_it(p):
    x = torch.rand(1000, 1000) + 0.5  # no zeros: a zero output means dropped
    y = hash_dropout(x, p, seed=123)
    kept = y != 0
    # 1M Bernoulli(1 - p) draws: the kept share is within 5 standard errors of 1 - p
    se = (p * (1 - p) / x.numel()) ** 0.5
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * se
    torch.testing.assert_close(y[kept], x[kept] / (1 - p), rtol=1e-6, atol=0)


def test_masks_of_neighbouring_elements_and_seeds_are_independent():
    p = 0.5
    a = hash_dropout(torch.ones(1 << 20), p, seed=1) != 0
    b = hash_dropout(torch.ones(1 << 20), p, seed=2) != 0
    se = (0.25 * 0.75 / a.numel()) ** 0.5  # of a share of pairs with P = 1/4
    assert abs((a[1:] & a[:-1]).float().mean().item() - 0.25) < 5 * se  # i and i + 1
    assert abs((a[1024:] & a[:-1024]).float().mean().item() - 0.25) < 5 * se  # rows of a (B, 1024) activation
    assert abs((a & b).float().mean().item() - 0.25) < 5 * se  # consecutive seeds


def test_the_mask_depends_on_the_seed_only_not_on_threads():
    x = torch.randn(300, 700)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = hash_dropout(x, 0.3, seed=99)
        torch.set_num_threads(2)
        two = hash_dropout(x, 0.3, seed=99)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    assert not torch.equal(one, hash_dropout(x, 0.3, seed=100))


def test_backward_applies_the_forward_mask_to_the_gradient():
    x = (torch.rand(64, 257) + 0.5).requires_grad_()
    g = torch.randn(64, 257)
    y = hash_dropout(x, 0.2, seed=7)
    y.backward(g)
    expected = torch.where(y != 0, g / 0.8, torch.zeros_like(g))
    torch.testing.assert_close(x.grad, expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("p", [0.124, 0.5])
def test_bfloat16_takes_the_float32_mask_and_rounds_like_torch(p):
    """A mixed-precision run's activations (``train.precision: bfloat16``): the same mask as
    float32 for the same seed, the kept values scaled in float32 and rounded to the nearest
    even bfloat16 as torch rounds; forward and backward."""
    x = (torch.randn(257, 300) * 50).bfloat16().requires_grad_()
    y = hash_dropout(x, p, seed=42)
    assert y.dtype == torch.bfloat16
    mask = hash_dropout(torch.ones(x.shape), p, seed=42) != 0
    assert torch.equal(y != 0, mask & (x != 0))
    expected = (x.detach().float() * mask / (1 - p)).bfloat16()
    assert torch.equal(y.detach(), expected)  # bit for bit
    g = torch.randn(x.shape).bfloat16()
    y.backward(g)
    assert x.grad.dtype == torch.bfloat16
    assert torch.equal(x.grad, (g.float() * mask / (1 - p)).bfloat16())
    d = Dropout(p)  # the module takes the kernel for bfloat16 too
    torch.manual_seed(3)
    got = d(x.detach())
    torch.manual_seed(3)
    assert torch.equal(got, hash_dropout(x.detach(), p, int(torch.randint(2 ** 63 - 1, (), dtype=torch.int64))))


def test_module_draws_its_seed_from_torch_so_seeded_runs_repeat():
    d = Dropout(0.25)
    x = torch.randn(128, 64)
    torch.manual_seed(0)
    first, second = d(x), d(x)
    torch.manual_seed(0)
    assert torch.equal(d(x), first)
    assert not torch.equal(first, second)  # a fresh mask every call


def test_eval_mode_and_p_zero_are_the_identity_and_bad_p_is_an_error():
    x = torch.randn(8, 5)
    d = Dropout(0.5).eval()
    assert d(x) is x
    assert Dropout(0.0).train()(x) is x
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.0)


def test_inputs_the_kernel_does_not_take_fall_back_to_torch_dropout():
    d = Dropout(0.3)
    x64 = torch.randn(50, 40, dtype=torch.float64)
    torch.manual_seed(5)
    got = d(x64)
    torch.manual_seed(5)
    assert torch.equal(got, F.dropout(x64, 0.3, training=True))
    # a non-contiguous float32 input takes the kernel on its contiguous copy, with the seed
    # drawn from torch's generator
    xt = torch.randn(40, 50).t()
    torch.manual_seed(5)
    y = d(xt)
    torch.manual_seed(5)
    seed = int(torch.randint(2 ** 63 - 1, (), dtype=torch.int64))
    assert y.shape == xt.shape
    assert torch.equal(y, hash_dropout(xt.contiguous(), 0.3, seed))


def test_towers_use_it_and_train_mode_changes_outputs_eval_does_not():
    torch.manual_seed(0)
    tower = build_tower("finalmlp", in_features=12, num_fields=3, embedding_dim=4, hidden=[16, 8], dropout=0.2)
    assert sum(isinstance(m, Dropout) for m in tower.modules()) == 4  # both streams, both layers
    x, emb = torch.randn(32, 12), torch.randn(32, 3, 4)
    tower.eval()
    assert torch.equal(tower(x, emb), tower(x, emb))
    tower.train()
    assert not torch.equal(tower(x, emb), tower(x, emb))
