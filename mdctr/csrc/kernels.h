// mdctr's compiled CPU kernels (Python module mdctr._kernels, built by setup.py).
#pragma once

#include <torch/extension.h>

#include <optional>
#include <tuple>
#include <vector>

// grouped.cpp: the row-block GEMMs of MLoRA's routed layer
at::Tensor grouped_linear(const at::Tensor& x, const std::vector<at::Tensor>& weights,
                          const std::vector<std::optional<at::Tensor>>& adds, const std::vector<int64_t>& bounds);
std::tuple<at::Tensor, at::Tensor, at::Tensor> grouped_linear_backward(
    const at::Tensor& grad, const at::Tensor& x, const std::vector<at::Tensor>& weights_t,
    const std::vector<int64_t>& bounds, bool need_gx, bool need_gt, bool need_sums);

// rows.cpp: a domain adapter's own embedding rows
std::tuple<at::Tensor, at::Tensor> own_rows_forward(const at::Tensor& rows, const at::Tensor& vecs,
                                                   const at::Tensor& values, const at::Tensor& lengths,
                                                   const at::Tensor& keep);
at::Tensor own_rows_backward(const at::Tensor& grad, const at::Tensor& pos, const at::Tensor& lengths,
                             int64_t n_rows);

// dropout.cpp: dropout with a counter-based mask, the same call forward and backward
at::Tensor hash_dropout(const at::Tensor& x, double p, int64_t seed);
