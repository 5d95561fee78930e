import itertools

import pytest
import torch

from mdctr.platform.towers import TOWERS, DeepFMTower, build_tower


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
    last hidden layer with ``return_hidden`` (what a distillation student's aux head reads),
    the same logits either way; TorchScript (exports) sees logits only."""
    from mdctr.platform.towers import MLP, Tower

    torch.manual_seed(0)
    t = build_tower(name, in_features=12, num_fields=3, embedding_dim=4, hidden=[8, 6])
    assert isinstance(t, Tower) and isinstance(t.mlp, MLP) and len(t.mlp.layers) == 2
    x, emb = torch.randn(5, 12), torch.randn(5, 3, 4)
    logits, hidden = t(x, emb, return_hidden=True)
    assert hidden.shape == (5, 6)
    torch.testing.assert_close(logits, t(x, emb))
    if name != "dcnv2":  # torchrec's LowRankCrossNet is not scriptable
        torch.testing.assert_close(torch.jit.script(t)(x, emb), logits)
