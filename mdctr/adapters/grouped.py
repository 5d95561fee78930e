"""Grouped GEMMs of MLoRA's routed layer: row blocks of a batch, each times its own weight.

:func:`linear` and :func:`linear_backward` run the compiled CPU kernel
(``mdctr/csrc/grouped.cpp``, :mod:`mdctr.core.native`) on CPU tensors, and a loop of torch
calls otherwise (CUDA, or an install built without torch). Both give the same blocks; the kernel cuts the rows into one
range per thread and runs single-threaded GEMMs in each, where the loop makes every block
GEMM a parallel region of its own (~5-10% slower per layer on 2 cores).
"""

from __future__ import annotations

import torch

from mdctr.core.native import kernels

def _bounds(sizes: list[int]) -> list[int]:
    bounds = [0]
    for n in sizes:
        bounds.append(bounds[-1] + n)
    return bounds


def linear(x: torch.Tensor, weights: list[torch.Tensor], adds: list[torch.Tensor | None],
           sizes: list[int]) -> torch.Tensor:
    """Row block ``i`` of the result (``sizes[i] > 0`` rows) is that block of ``x`` times
    ``weights[i]`` (in, out), plus ``adds[i]`` (a row vector, or None).

    The vector goes into the GEMM (``addmm``), as ``nn.functional.linear`` does, so a block
    whose weight is the plain weight gives the plain layer's bits. (torch's ``grouped_mm``
    loops over the groups on CPU, without the vector and with alignment and dtype
    restrictions.)
    """
    if kernels is not None and x.device.type == "cpu" and sizes:
        return kernels.grouped_linear(x.contiguous(), weights, adds, _bounds(sizes))
    return loop_linear(x, weights, adds, sizes)


def linear_backward(grad: torch.Tensor, x: torch.Tensor, weights_t: list[torch.Tensor], sizes: list[int], *,
                    need_gx: bool, need_gt: bool, need_sums: bool):
    """By row block ``i``: ``gx_i = grad_i weights_t[i]`` (``weights_t[i]``: (out, in)),
    ``gt[i] = x_i^T grad_i`` (in, out) and ``sums[i] = grad_i.sum(0)``; each None unless
    asked for. (``gt`` in (in, out) layout: this GEMM is ~10% faster than ``grad_i^T x_i``
    on CPU, and the adapter gradients read it as is.)"""
    if kernels is not None and grad.device.type == "cpu" and sizes:
        return kernels.grouped_linear_backward(grad.contiguous(), x.contiguous(), weights_t, _bounds(sizes),
                                               need_gx, need_gt, need_sums)
    return loop_linear_backward(grad, x, weights_t, sizes, need_gx=need_gx, need_gt=need_gt, need_sums=need_sums)


def loop_linear(x: torch.Tensor, weights: list[torch.Tensor], adds: list[torch.Tensor | None],
                sizes: list[int]) -> torch.Tensor:
    """:func:`linear` as one torch call per block."""
    out = x.new_empty(x.shape[0], weights[0].shape[1] if weights else 0)
    for xs, w, o, c in zip(x.split_with_sizes(sizes), weights, out.split_with_sizes(sizes), adds):
        if c is None:
            torch.mm(xs, w, out=o)
        else:
            torch.addmm(c, xs, w, out=o)
    return out


def loop_linear_backward(grad: torch.Tensor, x: torch.Tensor, weights_t: list[torch.Tensor], sizes: list[int], *,
                         need_gx: bool, need_gt: bool, need_sums: bool):
    """:func:`linear_backward` as torch calls per block."""
    grad = grad.contiguous()
    gx = grad.new_empty(x.shape) if need_gx else None
    gt = grad.new_empty(len(sizes), x.shape[1], grad.shape[1]) if need_gt else None
    sums = grad.new_empty(len(sizes), grad.shape[1]) if need_sums else None
    none = [None] * len(sizes)
    for gs, xs, w, gx_i, gt_i, sum_i in zip(
            grad.split_with_sizes(sizes), x.split_with_sizes(sizes) if gt is not None else none, weights_t,
            gx.split_with_sizes(sizes) if gx is not None else none, gt.unbind(0) if gt is not None else none,
            sums.unbind(0) if sums is not None else none):
        if gx_i is not None:
            torch.mm(gs, w, out=gx_i)
        if gt_i is not None:
            torch.mm(xs.t(), gs, out=gt_i)
        if sum_i is not None:
            torch.sum(gs, 0, out=sum_i)
    return gx, gt, sums
