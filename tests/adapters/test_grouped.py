import pytest
import torch
from torch import nn

from mdctr.adapters import grouped
from mdctr.core import native
from mdctr.adapters.layer import MLoRALinear, RoutingContext, _RoutedLinear


def blocks(sizes, d_in=24, d_out=40, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(sizes), d_in, generator=g)
    weights = [torch.randn(d_out, d_in, generator=g).t() for _ in sizes]  # (in, out) views, as the layer passes
    adds = [torch.randn(d_out, generator=g) if bias and i % 3 else None for i in range(len(sizes))]
    grad = torch.randn(sum(sizes), d_out, generator=g)
    return x, weights, adds, grad


# many small blocks, blocks split between the threads, one block, unequal blocks, a batch
# too small to split
SIZES = [[70] * 8, [300, 13, 600, 87], [1000], [1, 2, 517, 3, 200, 9, 64, 64, 1], [5, 7]]


def test_the_compiled_kernels_are_built():
    # make/pip install builds them (setup.py); without them every CPU step takes the slower torch calls
    assert native.status() == "compiled"


@pytest.mark.parametrize("sizes", SIZES)
def test_kernel_forward_matches_one_gemm_per_block(sizes):
    x, weights, adds, _ = blocks(sizes)
    got = grouped.linear(x, weights, adds, sizes)
    want = torch.cat([torch.addmm(c, xs, w) if c is not None else xs @ w
                      for xs, w, c in zip(x.split(sizes), weights, adds)])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(got, grouped.loop_linear(x, weights, adds, sizes), rtol=0, atol=1e-5)


@pytest.mark.parametrize("sizes", SIZES)
def test_kernel_backward_matches_the_block_products(sizes):
    x, weights, _, grad = blocks(sizes, seed=1)
    weights_t = [w.t() for w in weights]  # (out, in)
    gx, gt, sums = grouped.linear_backward(grad, x, weights_t, sizes, need_gx=True, need_gt=True, need_sums=True)
    for i, (gs, xs) in enumerate(zip(grad.split(sizes), x.split(sizes))):
        torch.testing.assert_close(gt[i], xs.t() @ gs, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(sums[i], gs.sum(0), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(gx, torch.cat([gs @ w for gs, w in zip(grad.split(sizes), weights_t)]),
                               rtol=0, atol=1e-5)
    ref = grouped.loop_linear_backward(grad, x, weights_t, sizes, need_gx=True, need_gt=True, need_sums=True)
    for got, want in zip((gx, gt, sums), ref):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_kernel_backward_computes_only_what_is_asked():
    x, weights, _, grad = blocks([100, 200])
    gx, gt, sums = grouped.linear_backward(grad, x, [w.t() for w in weights], [100, 200],
                                           need_gx=False, need_gt=True, need_sums=False)
    assert gx is None and sums is None and gt.shape == (2, 24, 40)


def test_kernel_rejects_bounds_that_do_not_cover_the_rows():
    x, weights, adds, _ = blocks([100, 100])
    with pytest.raises(RuntimeError, match="bounds must span"):
        grouped.linear(x, weights, adds, [100, 50])


def test_fresh_adapters_give_the_plain_layers_bits_on_a_batch_the_threads_split():
    # the kernel's per-thread GEMMs must give the rows the bits of the plain layer's one GEMM
    torch.manual_seed(0)
    base = nn.Linear(128, 256)
    names = [f"d{i}" for i in range(8)]
    ctx = RoutingContext(names)
    layer = MLoRALinear.from_linear(base, ctx, names)
    x = torch.randn(4096, 128)
    ctx.set(torch.randint(0, 8, (4096,)).sort().values)
    with torch.no_grad():
        assert torch.equal(layer(x), base(x))


def test_routed_layer_gradients_pass_gradcheck_through_the_kernel():
    # 140 rows: the kernel splits them between threads (and domain "b"'s block with them);
    # rows 130: have no adapter (the plain layer)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(140, 6, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(4, 6, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, generator=g, requires_grad=True)
    bank = [torch.randn(2, 6, 3, dtype=torch.float64, generator=g, requires_grad=True),
            torch.randn(2, 3, 4, dtype=torch.float64, generator=g, requires_grad=True),
            torch.randn(2, 4, dtype=torch.float64, generator=g, requires_grad=True)]
    groups = [(0, 50, 0, 0), (50, 130, 0, 1), (130, 140, None, None)]
    assert torch.autograd.gradcheck(lambda *t: _RoutedLinear.apply(t[0], t[1], t[2], groups, *t[3:]), (x, w, b, *bank))


def test_without_the_kernels_the_layer_runs_the_same_blocks_as_torch_calls(monkeypatch):
    # CUDA tensors, or an install built without torch, take this path
    torch.manual_seed(0)
    names = [f"d{i}" for i in range(3)]
    ctx = RoutingContext(names)
    layer = MLoRALinear.from_linear(nn.Linear(12, 20), ctx, names)
    with torch.no_grad():
        for d in names:
            layer.lora_B[d].normal_()
    x = torch.randn(300, 12, requires_grad=True)
    ctx.set(torch.randint(0, 3, (300,)).sort().values)

    def run():
        x.grad = None
        layer.zero_grad(set_to_none=True)
        out = layer(x)
        out.pow(2).sum().backward()
        return out.detach(), x.grad.clone(), layer.lora_A_0.grad.clone(), layer.weight.grad.clone()

    compiled = run()
    monkeypatch.setattr(grouped, "kernels", None)
    for got, want in zip(run(), compiled):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
