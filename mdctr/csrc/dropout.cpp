// Dropout on the CPU with a counter-based mask (mdctr/platform/dropout.py).
//
// torch's CPU dropout draws a float Bernoulli mask from its generator, scales it, and
// multiplies: three passes over the activation and one Mersenne-Twister draw per element.
// It was the largest forward cost of every shipped run (32% of a FinalMLP training's time,
// 39% of an adapter fine-tune's). Here element i of a call with seed s is kept iff
// hash(s, i) >= p * 2^32, one pass each way: the forward scales the kept inputs, the
// backward applies the same mask to the gradient by recomputing the hash, so no mask is
// stored. The mask depends on (seed, i) only, not on the thread count or how the range is
// split, and the seed is drawn from torch's generator, so seeded runs repeat. float32 and
// bfloat16 (the activations of a `train.precision: bfloat16` run) take the same mask.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernels.h"

namespace {

// Chris Wellons' lowbias32: a 32-bit integer hash with near-ideal avalanche
inline uint32_t lowbias32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

// Element i of a call keeps iff keep_bits(i) >= threshold: the one mask rule of every dtype
inline uint32_t keep_bits(uint32_t i, uint32_t k0, uint32_t k1) { return lowbias32(lowbias32(i ^ k0) + k1); }

// Vectorised: a 32-bit counter, no branch (a kept element times scale, a dropped one times
// 0, as torch's input * mask), and compiled for AVX2 too (8 lanes), picked at load time.
__attribute__((target_clones("avx2", "default")))
void masked_scale(const float* __restrict x, float* __restrict y, int64_t begin, int64_t end, uint32_t threshold,
                  float scale, uint32_t k0, uint32_t k1) {
  const int64_t n = end - begin;
  const float* xs = x + begin;
  float* ys = y + begin;
  const auto c0 = static_cast<uint32_t>(begin);
  for (int64_t j = 0; j < n; ++j) {
    const uint32_t r = keep_bits(c0 + static_cast<uint32_t>(j), k0, k1);
    ys[j] = xs[j] * (r >= threshold ? scale : 0.0f);
  }
}

// bfloat16 as raw bits: widen to float (the bits << 16), scale, round to the nearest even
// bfloat16. The input is bfloat16, so a NaN stays a NaN (its high mantissa bits are kept).
__attribute__((target_clones("avx2", "default")))
void masked_scale_bf16(const uint16_t* __restrict x, uint16_t* __restrict y, int64_t begin, int64_t end,
                       uint32_t threshold, float scale, uint32_t k0, uint32_t k1) {
  const int64_t n = end - begin;
  const uint16_t* xs = x + begin;
  uint16_t* ys = y + begin;
  const auto c0 = static_cast<uint32_t>(begin);
  for (int64_t j = 0; j < n; ++j) {
    const uint32_t r = keep_bits(c0 + static_cast<uint32_t>(j), k0, k1);
    float f;
    uint32_t u = static_cast<uint32_t>(xs[j]) << 16;
    std::memcpy(&f, &u, sizeof f);
    f *= (r >= threshold ? scale : 0.0f);
    std::memcpy(&u, &f, sizeof u);
    ys[j] = static_cast<uint16_t>((u + 0x7fffU + ((u >> 16) & 1U)) >> 16);
  }
}

}  // namespace

at::Tensor hash_dropout(const at::Tensor& x, double p, int64_t seed) {
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  TORCH_CHECK(x.device().is_cpu() && (x.scalar_type() == at::kFloat || bf16) && x.is_contiguous(),
              "hash_dropout: x must be a contiguous float32 or bfloat16 CPU tensor");
  TORCH_CHECK(p >= 0.0 && p < 1.0, "hash_dropout: p must be in [0, 1), got ", p);
  const int64_t n = x.numel();
  TORCH_CHECK(n < (int64_t{1} << 32), "hash_dropout: at most 2^32 elements (the counter is 32 bits)");
  auto y = at::empty_like(x);
  const uint32_t threshold = static_cast<uint32_t>(std::min(p * 4294967296.0, 4294967295.0));
  const float scale = static_cast<float>(1.0 / (1.0 - p));
  const auto s = static_cast<uint64_t>(seed);
  const auto k0 = static_cast<uint32_t>(s), k1 = static_cast<uint32_t>(s >> 32);
  if (bf16) {
    const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
    auto* yp = reinterpret_cast<uint16_t*>(y.data_ptr<at::BFloat16>());
    at::parallel_for(0, n, 1 << 14, [&](int64_t begin, int64_t end) {
      masked_scale_bf16(xp, yp, begin, end, threshold, scale, k0, k1);
    });
    return y;
  }
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, n, 1 << 14, [&](int64_t begin, int64_t end) {
    masked_scale(xp, yp, begin, end, threshold, scale, k0, k1);
  });
  return y;
}
