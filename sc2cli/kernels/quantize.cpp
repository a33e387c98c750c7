// Per-row symmetric int8 quantization of a weight, for `--quantize int8` at load: scale[n] = max_k |w[n, k]| / 127
// (1 for an all-zero row) and q[n, k] = round(w[n, k] / scale[n]) to the nearest integer, ties to even, in
// [-127, 127]. The same numbers as linear.quantize_int8's torch operations, bit for bit (float32 division, not a
// multiply by the reciprocal), for finite weights.
//
// Why native: done with torch operations, each row passed through float32 temporaries (a copy, its absolute
// values, the quotient, the rounded quotient) and the 3B shape's weights took 11.4 s of a 32 s int8 load; here
// each weight is read twice from its 16-bit form (the maximum, then the quotient) and written once as a byte.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <type_traits>

#include "simd.h"

namespace sc2 {
namespace {

using sc2::widen;  // (simd.h's, for bf16 and float32: the overload below would otherwise hide them)
inline float widen(c10::Half v) { return static_cast<float>(v); }

// A row's scale from its largest magnitude (1 for an all-zero row).
inline float row_scale(float largest) {
  const float scale = largest / 127.0f;
  return scale > 0.f ? scale : 1.f;
}

// One value's byte.
inline int8_t quantized(float value, float scale) {
  const float v = std::nearbyint(value / scale);  // the default rounding mode: to nearest, ties to even
  return static_cast<int8_t>(std::min(127.f, std::max(-127.f, v)));
}

// One row: its scale, and its bytes written to q.
template <typename T>
float quantize_row(const T* w, int64_t K, int8_t* q) {
  float largest = 0.f;
  for (int64_t k = 0; k < K; ++k) largest = std::max(largest, std::fabs(widen(w[k])));
  const float scale = row_scale(largest);
  for (int64_t k = 0; k < K; ++k) q[k] = quantized(widen(w[k]), scale);
  return scale;
}

// The same for bf16 rows, 8 values at a time.
__attribute__((target("avx2,fma"))) float quantize_row_avx2(const uint16_t* w, int64_t K, int8_t* q) {
  const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 most = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) most = _mm256_max_ps(most, _mm256_and_ps(load8(w + k), magnitude));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, most);
  float largest = *std::max_element(lanes, lanes + 8);
  for (int64_t j = k; j < K; ++j) largest = std::max(largest, std::fabs(widen(w[j])));
  const float scale = row_scale(largest);
  const __m256 divisor = _mm256_set1_ps(scale), low = _mm256_set1_ps(-127.f), high = _mm256_set1_ps(127.f);
  for (k = 0; k + 8 <= K; k += 8) {
    __m256 v = _mm256_round_ps(_mm256_div_ps(load8(w + k), divisor), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256i whole = _mm256_cvtps_epi32(_mm256_min_ps(high, _mm256_max_ps(low, v)));
    // 8 int32 in [-127, 127] -> 8 bytes: pack to 16 bits, then to 8 (saturation never applies).
    __m128i halves = _mm_packs_epi32(_mm256_castsi256_si128(whole), _mm256_extracti128_si256(whole, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(q + k), _mm_packs_epi16(halves, halves));
  }
  for (; k < K; ++k) q[k] = quantized(widen(w[k]), scale);
  return scale;
}

template <typename T>
void quantize_rows(const at::Tensor& weight, at::Tensor& q, at::Tensor& scale, bool avx2) {
  const int64_t N = weight.size(0), K = weight.size(1);
  const T* w = reinterpret_cast<const T*>(weight.data_ptr());
  int8_t* out = q.data_ptr<int8_t>();
  float* scales = scale.data_ptr<float>();
  at::parallel_for(0, N, std::max<int64_t>(1, (256 * 1024) / std::max<int64_t>(1, K)), [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      if constexpr (std::is_same_v<T, uint16_t>) {
        if (avx2) {
          scales[n] = quantize_row_avx2(w + n * K, K, out + n * K);
          continue;
        }
      }
      scales[n] = quantize_row(w + n * K, K, out + n * K);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> quantize_int8(const at::Tensor& weight, int64_t isa) {
  TORCH_CHECK(weight.device().is_cpu() && weight.dim() == 2 && weight.is_contiguous(),
              "sc2 quantize_int8: the weight must be a contiguous 2-D CPU tensor");
  TORCH_CHECK(isa_supported(isa), "sc2 quantize_int8: this CPU cannot run instruction set ", isa);
  at::Tensor q = at::empty(weight.sizes(), weight.options().dtype(at::kChar));
  at::Tensor scale = at::empty({weight.size(0)}, weight.options().dtype(at::kFloat));
  const bool avx2 = isa >= kAvx2;
  switch (weight.scalar_type()) {
    case at::kBFloat16: quantize_rows<uint16_t>(weight, q, scale, avx2); break;
    case at::kHalf: quantize_rows<c10::Half>(weight, q, scale, avx2); break;
    case at::kFloat: quantize_rows<float>(weight, q, scale, avx2); break;
    default: TORCH_CHECK(false, "sc2 quantize_int8: bfloat16, float16 or float32 weights only");
  }
  return {q, scale};
}

}  // namespace
}  // namespace sc2

TORCH_LIBRARY_FRAGMENT(sc2, m) { m.def("quantize_int8(Tensor weight, int isa) -> (Tensor, Tensor)"); }

TORCH_LIBRARY_IMPL(sc2, CPU, m) { m.impl("quantize_int8", &sc2::quantize_int8); }
