// Grouped GEMMs of MLoRA's routed layer on the CPU (mdctr/adapters/layer.py, _RoutedLinear).
//
// A domain-grouped batch is cut into row blocks, one per domain, each multiplied by its own
// (merged) weight. Called one by one from Python, every block GEMM is a parallel region of
// its own: with few cores the fork/join and the split of a few hundred rows over the
// threads cost ~5-10% of the layer (benchmarks/adapter_overhead.py). Here the rows are cut
// into one contiguous range per thread instead, and each thread runs single-threaded GEMMs
// on the blocks its range meets, as torch.bmm does for equal blocks. Results per row do
// not depend on the cut (each output row is one GEMM row); the weight-gradient blocks of a
// domain split between two threads are summed afterwards.
#include <ATen/Parallel.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "kernels.h"

namespace {

struct Piece {
  int64_t group;  // row block (domain) index
  int64_t lo, hi;  // rows
  int64_t slot;  // where its weight-gradient block goes: the group's own (-1) or an extra one
};

// The per-thread row ranges cut at the block bounds.
std::vector<std::vector<Piece>> cut(const std::vector<int64_t>& bounds, int64_t rows, int64_t threads,
                                    int64_t* extra) {
  std::vector<std::vector<Piece>> pieces(threads);
  std::vector<bool> seen(bounds.size(), false);
  *extra = 0;
  for (int64_t t = 0; t < threads; ++t) {
    const int64_t lo = rows * t / threads, hi = rows * (t + 1) / threads;
    for (size_t g = 0; g + 1 < bounds.size(); ++g) {
      const int64_t a = std::max(lo, bounds[g]), b = std::min(hi, bounds[g + 1]);
      if (a >= b) continue;
      pieces[t].push_back({static_cast<int64_t>(g), a, b, seen[g] ? (*extra)++ : -1});
      seen[g] = true;
    }
  }
  return pieces;
}

int64_t threads_for(int64_t rows) {
  // at least a few dozen rows per thread, or the split is not worth a parallel region
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows / 64));
}

void check_bounds(const std::vector<int64_t>& bounds, int64_t rows, size_t groups) {
  TORCH_CHECK(groups > 0, "grouped linear: no row blocks");
  TORCH_CHECK(bounds.size() == groups + 1, "grouped linear: ", groups, " groups need ", groups + 1, " bounds");
  TORCH_CHECK(bounds.front() == 0 && bounds.back() == rows, "grouped linear: bounds must span the ", rows, " rows");
  for (size_t g = 0; g + 1 < bounds.size(); ++g)
    TORCH_CHECK(bounds[g] < bounds[g + 1], "grouped linear: bounds must increase");
}

}  // namespace

// out[lo:hi] = x[lo:hi] @ weights[g] + adds[g] for each block g = [bounds[g], bounds[g+1]).
// weights[g]: (in, out), any strides; adds[g]: (out,) or None.
at::Tensor grouped_linear(const at::Tensor& x, const std::vector<at::Tensor>& weights,
                          const std::vector<std::optional<at::Tensor>>& adds, const std::vector<int64_t>& bounds) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "grouped linear: x must be a contiguous matrix");
  TORCH_CHECK(weights.size() == adds.size(), "grouped linear: one add per weight");
  check_bounds(bounds, x.size(0), weights.size());
  auto out = at::empty({x.size(0), weights.front().size(1)}, x.options());
  int64_t extra = 0;
  const auto pieces = cut(bounds, x.size(0), threads_for(x.size(0)), &extra);
  at::parallel_for(0, static_cast<int64_t>(pieces.size()), 1, [&](int64_t t0, int64_t t1) {
    at::AutoDispatchBelowADInplaceOrView guard;  // plain kernels in every thread, no autograd
    for (int64_t t = t0; t < t1; ++t) {
      for (const auto& p : pieces[t]) {
        auto o = out.narrow(0, p.lo, p.hi - p.lo);
        auto xs = x.narrow(0, p.lo, p.hi - p.lo);
        if (adds[p.group].has_value()) {
          at::addmm_out(o, *adds[p.group], xs, weights[p.group]);
        } else {
          at::mm_out(o, xs, weights[p.group]);
        }
      }
    }
  });
  return out;
}

// The backward of grouped_linear, by block: gx[lo:hi] = grad[lo:hi] @ weights_t[g] (weights_t[g]:
// (out, in)), gt[g] = x[lo:hi]^T grad[lo:hi] (in, out) and sums[g] = grad[lo:hi].sum(0); each
// only when asked for (an undefined tensor otherwise).
std::tuple<at::Tensor, at::Tensor, at::Tensor> grouped_linear_backward(
    const at::Tensor& grad, const at::Tensor& x, const std::vector<at::Tensor>& weights_t,
    const std::vector<int64_t>& bounds, bool need_gx, bool need_gt, bool need_sums) {
  TORCH_CHECK(grad.dim() == 2 && grad.is_contiguous() && x.dim() == 2 && x.is_contiguous(),
              "grouped linear backward: grad and x must be contiguous matrices");
  const auto groups = static_cast<int64_t>(weights_t.size());
  check_bounds(bounds, x.size(0), weights_t.size());
  const int64_t in = x.size(1), out_dim = grad.size(1);
  int64_t extra = 0;
  const auto pieces = cut(bounds, x.size(0), threads_for(x.size(0)), &extra);
  at::Tensor gx, gt, sums, gt_extra, sums_extra;
  if (need_gx) gx = at::empty({x.size(0), in}, x.options());
  if (need_gt) {
    gt = at::empty({groups, in, out_dim}, x.options());
    gt_extra = at::empty({extra, in, out_dim}, x.options());
  }
  if (need_sums) {
    sums = at::empty({groups, out_dim}, x.options());
    sums_extra = at::empty({extra, out_dim}, x.options());
  }
  at::parallel_for(0, static_cast<int64_t>(pieces.size()), 1, [&](int64_t t0, int64_t t1) {
    at::AutoDispatchBelowADInplaceOrView guard;
    for (int64_t t = t0; t < t1; ++t) {
      for (const auto& p : pieces[t]) {
        auto gs = grad.narrow(0, p.lo, p.hi - p.lo);
        if (need_gx) {
          auto o = gx.narrow(0, p.lo, p.hi - p.lo);
          at::mm_out(o, gs, weights_t[p.group]);
        }
        if (need_gt) {
          auto o = p.slot < 0 ? gt.select(0, p.group) : gt_extra.select(0, p.slot);
          at::mm_out(o, x.narrow(0, p.lo, p.hi - p.lo).t(), gs);
        }
        if (need_sums) {
          auto o = p.slot < 0 ? sums.select(0, p.group) : sums_extra.select(0, p.slot);
          at::sum_out(o, gs, {0});
        }
      }
    }
  });
  if (extra > 0) {  // blocks split between threads: add the later parts to the first
    for (const auto& thread : pieces) {
      for (const auto& p : thread) {
        if (p.slot < 0) continue;
        if (need_gt) gt.select(0, p.group).add_(gt_extra.select(0, p.slot));
        if (need_sums) sums.select(0, p.group).add_(sums_extra.select(0, p.slot));
      }
    }
  }
  return {gx, gt, sums};
}
