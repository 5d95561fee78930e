import itertools

import pytest
import torch

from mdctr.platform.towers import MLP, TOWERS, DeepFMTower, FinalMLPTower, build_tower


@pytest.mark.parametrize("name", sorted(TOWERS))
def test_tower_shapes_and_hidden_layers(name):
    torch.manual_seed(0)
    tower = build_tower(name, in_features=3 * 4 + 2, num_fields=3, embedding_dim=4, hidden=[16, 8])
    out = tower(torch.randn(7, 14), torch.randn(7, 3, 4))
    assert out.shape == (7,)
    assert torch.isfinite(out).all()
    # every tower exposes its hidden Linear layers where adapters attach
    assert [tuple(layer.weight.shape) for layer in tower.mlp.layers] == [(16, 14), (8, 16)]
    assert tower.mlp.head.out_features == 1


def test_deepfm_second_order_term_is_pairwise_dot_products():
    torch.manual_seed(0)
    tower = DeepFMTower(in_features=12, num_fields=3, embedding_dim=4, hidden=[8])
    x, emb = torch.randn(5, 12), torch.randn(5, 3, 4)
    pairwise = sum((emb[:, i] * emb[:, j]).sum(-1) for i, j in itertools.combinations(range(3), 2))
    expected = tower.linear(x).squeeze(-1) + pairwise + tower.mlp(x)
    torch.testing.assert_close(tower(x, emb), expected)


def test_unknown_tower_is_a_clear_error():
    with pytest.raises(ValueError, match="model.tower must be one of dcnv2, deepfm, mlp|model.tower must be one of mlp, dcnv2, deepfm"):
        build_tower("transformer", in_features=4, num_fields=1, embedding_dim=4, hidden=[4])


@pytest.mark.parametrize("name", sorted(TOWERS))
def test_every_tower_keeps_the_tower_protocol(name):
    """The written interface: an ``mlp`` whose layers adapters replace, logits (B,), and the
    representation below the logit (``hidden_width`` wide) with ``return_hidden`` (what a
    distillation student's aux head reads), the same logits either way; TorchScript
    (exports) sees logits only."""
    from mdctr.platform.towers import MLP, Tower

    torch.manual_seed(0)
    t = build_tower(name, in_features=12, num_fields=3, embedding_dim=4, hidden=[8, 6])
    assert isinstance(t, Tower) and isinstance(t.mlp, MLP) and len(t.mlp.layers) == 2
    x, emb = torch.randn(5, 12), torch.randn(5, 3, 4)
    logits, hidden = t(x, emb, return_hidden=True)
    assert hidden.shape == (5, t.hidden_width) and t.hidden_width == (12 if name == "finalmlp" else 6)
    torch.testing.assert_close(logits, t(x, emb))
    if name != "dcnv2":  # torchrec's LowRankCrossNet is not scriptable
        torch.testing.assert_close(torch.jit.script(t)(x, emb), logits)


def _finalmlp(**kw):
    torch.manual_seed(0)
    return FinalMLPTower(in_features=12, num_fields=3, embedding_dim=4, hidden=[8, 6], **kw)


@pytest.mark.parametrize("gating", [True, False])
def test_finalmlp_shapes_and_hidden(gating):
    t = _finalmlp(fusion_heads=3, feature_gating=gating)
    x, emb = torch.randn(5, 12), torch.randn(5, 3, 4)
    assert t(x, emb).shape == (5,)
    logits, hidden = t(x, emb, return_hidden=True)
    assert logits.shape == (5,) and hidden.shape == (5, 12)
    # both streams' last hidden layers, each behind its own gate: the logit reads both
    torch.testing.assert_close(hidden[:, :6], t.mlp.last_hidden(t.gate1(x)))
    torch.testing.assert_close(hidden[:, 6:], t.mlp2.last_hidden(t.gate2(x)))
    torch.testing.assert_close(logits, t(x, emb))


def test_finalmlp_feature_gating_adds_one_gate_per_stream():
    on, off = _finalmlp(feature_gating=True), _finalmlp(feature_gating=False)
    gate_keys = {k for k in on.state_dict() if k.startswith("gate")}
    assert gate_keys == {f"gate{i}.proj.{w}" for i in (1, 2) for w in ("weight", "bias")}
    assert not any(k.startswith("gate") for k in off.state_dict())
    assert set(on.state_dict()) - gate_keys == set(off.state_dict())
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(on) - n(off) == 2 * (12 * 12 + 12)
    # off: both streams see the input as is; on: 2 * sigmoid(proj(x)) elementwise
    x = torch.randn(5, 12)
    torch.testing.assert_close(on.gate1(x), x * 2 * torch.sigmoid(on.gate1.proj(x)))
    assert torch.equal(off.gate1(x), x) and torch.equal(off.gate2(x), x)


def test_finalmlp_multi_head_bilinear_fusion_formula():
    t = _finalmlp(fusion_heads=2, feature_gating=False)
    assert t.bilinear.shape == (2, 3, 3)
    with torch.no_grad():
        t.bilinear.copy_(torch.arange(18, dtype=torch.float32).view(2, 3, 3) / 10)
        t.mlp.head.weight.copy_(torch.tensor([[1.0, -1.0, 2.0, 0.5, 0.0, 3.0]]))
        t.mlp.head.bias.fill_(0.25)
        t.mlp2.head.weight.copy_(torch.tensor([[0.5, 2.0, -1.0, 1.0, 1.5, -2.0]]))
        t.mlp2.head.bias.fill_(-0.5)
    h1, h2 = torch.randn(4, 6), torch.randn(4, 6)
    w1, w2, W = t.mlp.head.weight[0], t.mlp2.head.weight[0], t.bilinear.detach()
    for b in range(4):
        expected = h1[b] @ w1 + h2[b] @ w2 + 0.25 - 0.5
        for k in range(2):  # head k pairs units 3k..3k+2 of each stream
            expected = expected + h1[b, 3 * k:3 * k + 3] @ W[k] @ h2[b, 3 * k:3 * k + 3]
        torch.testing.assert_close(t.fuse(h1, h2)[b], expected)
    # and the tower's logit is that fusion of the two streams' last hidden layers
    x = torch.randn(4, 12)
    torch.testing.assert_close(t(x, torch.randn(4, 3, 4)), t.fuse(t.mlp.last_hidden(x), t.mlp2.last_hidden(x)))


@pytest.mark.parametrize("gating", [True, False])
def test_finalmlp_scripts_to_the_eager_logits(gating):
    t = _finalmlp(fusion_heads=2, feature_gating=gating, dropout=0.1).eval()
    x, emb = torch.randn(5, 12), torch.randn(5, 3, 4)
    torch.testing.assert_close(torch.jit.script(t)(x, emb), t(x, emb))


def test_finalmlp_adapters_attach_to_stream_one_only():
    """Adapters adapt every MLP of a model; FinalMLP's second stream is not one, so exports
    (which merge ``tower.mlp.layers``) see every adapter."""
    t = _finalmlp()
    assert [m for m in t.modules() if isinstance(m, MLP)] == [t.mlp]


def test_fusion_heads_must_divide_the_last_hidden_width(make_config):
    with pytest.raises(ValueError, match=r"model.fusion_heads \(4\) must divide the last hidden width"):
        FinalMLPTower(in_features=12, num_fields=3, embedding_dim=4, hidden=[8, 6], fusion_heads=4)
    with pytest.raises(ValueError, match=r"model.fusion_heads \(3\) must divide the last hidden width"):
        make_config("d", model={"tower": "finalmlp", "hidden": [64, 32], "fusion_heads": 3})
    assert make_config("d", model={"tower": "finalmlp", "hidden": [64, 32], "fusion_heads": 4}).model.fusion_heads == 4


def test_every_tower_builds_from_the_model_config(make_config):
    """CTRModel passes every tower the whole model section's tower settings."""
    from torchrec import PoolingType

    from mdctr.platform.model import CTRModel, FeatureLayout

    layout = FeatureLayout(keys=["a", "b"], rows={"a": 10, "b": 5}, pooling=dict.fromkeys("ab", PoolingType.SUM),
                           dense_dim=2, domain_names=["x"])
    for name in TOWERS:
        cfg = make_config("d", model={"tower": name, "embedding_dim": 4, "hidden": [8, 4]}).model
        model = CTRModel(layout, cfg, device="meta")
        assert isinstance(model.tower, TOWERS[name])
