// Rotary embeddings on the fused q/k/v projection of a decode step, in one call: q and k, rotated (half-split
// rotation: x * cos + rotate_half(x) * sin) into tensors of their own. (v needs no work: the caller views it.)
//
// Why a kernel: torch spends about 25 small operations per layer on this (split, views, two rotations of five
// operations each), a few hundred microseconds of every decode step; the arithmetic is a few thousand numbers.
//
// The numbers are torch's own, bit for bit: each product and the sum are rounded to the tensors' dtype as torch's
// separate operations round them (bf16: float32 arithmetic rounded to nearest-even after each operation;
// float32: plain float32 operations, never fused into FMA: this file is compiled with -ffp-contract=off).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <tuple>

namespace sc2 {
namespace {

// One operation of torch's in dtype T: float32 arithmetic, rounded to T.
template <typename T>
inline float round_to(float v) {
  return static_cast<float>(static_cast<T>(v));
}

template <typename T>
void rotate(const T* x, const T* cos, const T* sin, T* out, int64_t D) {
  const int64_t half = D / 2;
  for (int64_t d = 0; d < D; ++d) {
    // rotate_half(x)[d]: -x[d + half] in the first half, x[d - half] in the second (negation is exact).
    const float rotated = d < half ? -static_cast<float>(x[d + half]) : static_cast<float>(x[d - half]);
    const float a = round_to<T>(static_cast<float>(x[d]) * static_cast<float>(cos[d]));
    const float b = round_to<T>(rotated * static_cast<float>(sin[d]));
    out[d] = static_cast<T>(a + b);
  }
}

std::tuple<at::Tensor, at::Tensor> rotary_qkv(const at::Tensor& qkv_in, const at::Tensor& cos_in,
                                              const at::Tensor& sin_in, int64_t heads, int64_t kv_heads) {
  TORCH_CHECK(qkv_in.device().is_cpu() && cos_in.device().is_cpu() && sin_in.device().is_cpu(),
              "sc2 rotary_qkv: CPU tensors only");
  TORCH_CHECK(qkv_in.scalar_type() == at::kBFloat16 || qkv_in.scalar_type() == at::kFloat,
              "sc2 rotary_qkv: q/k/v must be bfloat16 or float32");
  TORCH_CHECK(cos_in.scalar_type() == qkv_in.scalar_type() && sin_in.scalar_type() == qkv_in.scalar_type(),
              "sc2 rotary_qkv: cos and sin must have q/k/v's dtype");
  TORCH_CHECK(qkv_in.dim() == 3 && cos_in.dim() == 3 && cos_in.sizes() == sin_in.sizes(),
              "sc2 rotary_qkv: q/k/v must be [B, S, (H + 2 KV) * D], cos and sin [B or 1, S, D]");
  const int64_t B = qkv_in.size(0), S = qkv_in.size(1), D = cos_in.size(2);
  TORCH_CHECK(heads > 0 && kv_heads > 0 && D % 2 == 0 && qkv_in.size(2) == (heads + 2 * kv_heads) * D,
              "sc2 rotary_qkv: the last dimension must hold (heads + 2 kv_heads) * D values, D even");
  TORCH_CHECK((cos_in.size(0) == 1 || cos_in.size(0) == B) && cos_in.size(1) == S,
              "sc2 rotary_qkv: cos and sin must be [B or 1, S, D]");
  const at::Tensor qkv = qkv_in.contiguous(), cos = cos_in.contiguous(), sin = sin_in.contiguous();
  at::Tensor q = at::empty({B, heads, S, D}, qkv.options());
  at::Tensor k = at::empty({B, kv_heads, S, D}, qkv.options());

  const auto run = [&](auto tag) {
    using T = decltype(tag);
    const T* src = qkv.data_ptr<T>();
    const T* c = cos.data_ptr<T>();
    const T* s = sin.data_ptr<T>();
    const int64_t width = qkv.size(2);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < S; ++t) {
        const T* row = src + (b * S + t) * width;
        const int64_t angle = ((cos.size(0) == 1 ? 0 : b) * S + t) * D;
        for (int64_t h = 0; h < heads; ++h)
          rotate(row + h * D, c + angle, s + angle, q.data_ptr<T>() + ((b * heads + h) * S + t) * D, D);
        for (int64_t h = 0; h < kv_heads; ++h)
          rotate(row + (heads + h) * D, c + angle, s + angle, k.data_ptr<T>() + ((b * kv_heads + h) * S + t) * D, D);
      }
  };
  if (qkv.scalar_type() == at::kBFloat16) run(c10::BFloat16{});
  else run(float{});
  return {q, k};
}

}  // namespace
}  // namespace sc2

TORCH_LIBRARY_FRAGMENT(sc2, m) {
  m.def("rotary_qkv(Tensor qkv, Tensor cos, Tensor sin, int heads, int kv_heads) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(sc2, CPU, m) { m.impl("rotary_qkv", &sc2::rotary_qkv); }
