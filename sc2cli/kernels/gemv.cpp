// The decode step's products: a few rows x [M, K] times a weight [N, K] stored in 16 or 8 bits, summed in
// float32: out[m, n] = scale[n] * sum_k w[n, k] * x[m, k] + bias[n] (scale: int8 weights only), rounded once to
// x's dtype. On CPUs without bf16 arithmetic (AVX2) a prompt's rows too: there the kernel passes groups of rows
// over cache-sized blocks of the weight, at ~93% of the float32 GEMM's speed with its upcasts at 512 rows and
// faster below ~200, and a prompt row gets a decode row's numbers.
//
// A decode step multiplies every weight matrix by one vector per sequence, so its speed is how fast the weights
// stream from memory. torch's bf16 matrix-vector kernel, capped at AVX2, streams about half of what the memory
// gives (12 of ~22 GB/s on two cores, measured); its int8 paths round the activations to int8 too. These
// kernels widen each weight to float32 in registers (bf16: a zero-extend and a shift, since bf16 is the top half
// of a float32; int8: a sign-extend and a convert) and multiply with FMA, or, for bf16 weights and bf16 rows on a
// CPU with AVX-512 BF16, multiply with the bf16 dot product instruction (no widening), reading every weight once
// for all M rows.
//
// One function per instruction set, compiled here for each with the compiler's `target` attribute and chosen by
// the caller at run time (sc2cli.kernels): 3 = AVX-512 BF16, 2 = AVX-512 (F+BW), 1 = AVX2 (+FMA), 0 = scalar C++.
//
// Every output (m, n) is summed by one thread in the same order whatever M, the thread count or the other rows:
// a row's numbers never depend on what came with it.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>

#include "simd.h"

namespace sc2 {
namespace {

constexpr int64_t kMaxRows = 4;  // rows of x per pass over the weights (decode: one per sequence)
// A prompt's rows (more than kMaxRows): each thread passes groups of rows over a block of its weight rows this
// many bytes long (and at least kBlockRows rows), which stays in its L2 cache meanwhile. Measured on a Zen 5
// core, AVX2, 512 rows of the ~180M shape's four products: blocks of 128, 256 and 512 KB ran 164, 169 and 165
// GFLOP/s; groups of 5, 6 and 8 rows 164, 169 and 136 (8 rows' 16 sums no longer fit AVX2's registers; 6 rows'
// 12 do). Every row passes once per block, so few weight rows per block re-read the rows too often when they
// are long: 3B's c_proj (K = 12,288) ran 120 GFLOP/s with blocks of 10 rows, 145 with 24, 158 with 64.
constexpr int64_t kBlockBytes = 256 * 1024;
constexpr int64_t kBlockRows = 64;
constexpr int64_t kPromptRowsAvx2 = 6;

struct Problem {
  int64_t K, ldx, ldo;
  const float* x;      // [M, K], rows ldx apart
  const uint16_t* xh;  // the same rows in bf16, rows ldxh apart, where x came in bf16 (else nullptr)
  int64_t ldxh;
  const float* scale;  // [N] or nullptr
  const float* bias;   // [N] or nullptr
  float* out;          // [M, N], rows ldo apart
};

template <typename T>
inline void finish(const Problem& p, const T* w, int m, int64_t n, int64_t from, float sum) {
  for (int64_t k = from; k < p.K; ++k) sum += widen(w[n * p.K + k]) * p.x[m * p.ldx + k];
  if (p.scale) sum *= p.scale[n];
  p.out[m * p.ldo + n] = p.bias ? sum + p.bias[n] : sum;
}

// Each weight row is read front to back, with kSums independent sums along k so that the FMAs do not wait on each
// other. The count is the same for any M: a row's sums must not depend on how many rows came with it.
constexpr int kSums = 2;

// Bytes ahead of the read that each pass asks the cache for: the hardware prefetcher stops at every 4 KB page,
// and a row of a decode-sized matrix is 1-8 KB long (measured: int8 10.5 -> 15 GB/s on two cores; bf16 gains less).
constexpr int64_t kPrefetchBytes = 2048;

// S weight rows are read at once, `stride` rows apart (the two halves of a thread's rows): two sequential streams
// keep more of the memory's reads in flight than one. Measured on a Zen 5 EPYC core streaming 3B-sized bf16
// matrices: 31 -> 35 GB/s with the bf16 dot product (4 streams: 33, 8: 29). Which rows go together never changes
// a row's sums, so S is free to depend on M and the instruction set: the accumulators of S rows x M rows x kSums
// must fit the registers (AVX-512 has 32, AVX2 16).
constexpr int kStreamsAvx512 = 2;
template <int M>
constexpr int kStreamsAvx2 = M <= 2 ? 2 : 1;

// The end of a block: each of its S x M outputs' kSums vector sums added, reduced and finished (the scalar tail
// from `body`, scale, bias). One overload per vector width, for the reason below.
template <typename T, int M, int S>
__attribute__((target("avx2,fma"))) inline void finish_block(const Problem& p, const T* w, int64_t n, int64_t stride,
                                                             int64_t body, const __m256 (&acc)[S][kSums][M]) {
  for (int s = 0; s < S; ++s)
    for (int m = 0; m < M; ++m) {
      __m256 t = acc[s][0][m];
      for (int u = 1; u < kSums; ++u) t = _mm256_add_ps(t, acc[s][u][m]);
      finish(p, w, m, n + s * stride, body, hsum(t));
    }
}
template <typename T, int M, int S>
__attribute__((target("avx512f,avx512bw"))) inline void finish_block(const Problem& p, const T* w, int64_t n,
                                                                     int64_t stride, int64_t body,
                                                                     const __m512 (&acc)[S][kSums][M]) {
  for (int s = 0; s < S; ++s)
    for (int m = 0; m < M; ++m) {
      __m512 t = acc[s][0][m];
      for (int u = 1; u < kSums; ++u) t = _mm512_add_ps(t, acc[s][u][m]);
      finish(p, w, m, n + s * stride, body, hsum(t));
    }
}

// block_avx2 and block_avx512 are the same loop at two vector widths. They stay two functions: gcc inlines the
// intrinsics only into a function that carries their target attribute, so one template for both cannot be written.
template <typename T, int M, int S>
__attribute__((target("avx2,fma"))) void block_avx2(const Problem& p, const T* w, int64_t n, int64_t stride) {
  __m256 acc[S][kSums][M];
  for (int s = 0; s < S; ++s)
    for (int u = 0; u < kSums; ++u)
      for (int m = 0; m < M; ++m) acc[s][u][m] = _mm256_setzero_ps();
  const int64_t body = p.K - p.K % (8 * kSums);
  for (int64_t k = 0; k < body; k += 8 * kSums) {
    for (int s = 0; s < S; ++s) {
      const T* row = w + (n + s * stride) * p.K + k;
      _mm_prefetch(reinterpret_cast<const char*>(row) + kPrefetchBytes, _MM_HINT_T0);
      for (int u = 0; u < kSums; ++u) {
        __m256 wv = load8(row + 8 * u);
        for (int m = 0; m < M; ++m)
          acc[s][u][m] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(p.x + m * p.ldx + k + 8 * u), acc[s][u][m]);
      }
    }
  }
  finish_block(p, w, n, stride, body, acc);
}

template <typename T, int M, int S>
__attribute__((target("avx512f,avx512bw"))) void block_avx512(const Problem& p, const T* w, int64_t n,
                                                               int64_t stride) {
  __m512 acc[S][kSums][M];
  for (int s = 0; s < S; ++s)
    for (int u = 0; u < kSums; ++u)
      for (int m = 0; m < M; ++m) acc[s][u][m] = _mm512_setzero_ps();
  const int64_t body = p.K - p.K % (16 * kSums);
  for (int64_t k = 0; k < body; k += 16 * kSums) {
    for (int s = 0; s < S; ++s) {
      const T* row = w + (n + s * stride) * p.K + k;
      _mm_prefetch(reinterpret_cast<const char*>(row) + kPrefetchBytes, _MM_HINT_T0);
      for (int u = 0; u < kSums; ++u) {
        __m512 wv = load16(row + 16 * u);
        for (int m = 0; m < M; ++m)
          acc[s][u][m] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(p.x + m * p.ldx + k + 16 * u), acc[s][u][m]);
      }
    }
  }
  finish_block(p, w, n, stride, body, acc);
}

// AVX-512 BF16, where x came in bf16: `vdpbf16ps` multiplies 32 bf16 weights by 32 bf16 values of x and adds the
// products pairwise into 16 float32 sums, in one instruction: no widening (single-core streaming of 3B-sized
// matrices 27 -> 33 GB/s, cache-resident 61 -> 73). The product of two bf16 values is exact in float32, so the
// numbers differ from the widening loop's only in the order of the float32 additions and in bf16 subnormals,
// which the instruction reads as zero.
template <int M, int S>
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void block_avx512bf16(const Problem& p, const uint16_t* w,
                                                                             int64_t n, int64_t stride) {
  __m512 acc[S][kSums][M];
  for (int s = 0; s < S; ++s)
    for (int u = 0; u < kSums; ++u)
      for (int m = 0; m < M; ++m) acc[s][u][m] = _mm512_setzero_ps();
  const int64_t body = p.K - p.K % (32 * kSums);
  for (int64_t k = 0; k < body; k += 32 * kSums) {
    for (int u = 0; u < kSums; ++u) {
      __m512bh xv[M];
      for (int m = 0; m < M; ++m) xv[m] = (__m512bh)_mm512_loadu_si512(p.xh + m * p.ldxh + k + 32 * u);
      for (int s = 0; s < S; ++s) {
        const uint16_t* at = w + (n + s * stride) * p.K + k + 32 * u;  // one cache line
        _mm_prefetch(reinterpret_cast<const char*>(at) + kPrefetchBytes, _MM_HINT_T0);
        __m512bh wv = (__m512bh)_mm512_loadu_si512(at);
        for (int m = 0; m < M; ++m) acc[s][u][m] = _mm512_dpbf16_ps(acc[s][u][m], wv, xv[m]);
      }
    }
  }
  finish_block(p, w, n, stride, body, acc);
}

template <typename T, int M, int S>
void block(int64_t isa, const Problem& p, const T* w, int64_t n, int64_t stride) {
  if constexpr (std::is_same_v<T, uint16_t>) {
    if (isa == kAvx512Bf16 && p.xh) return block_avx512bf16<M, S>(p, w, n, stride);
  }
  if (isa >= kAvx512) return block_avx512<T, M, S>(p, w, n, stride);
  if (isa == kAvx2) return block_avx2<T, M, S>(p, w, n, stride);
  for (int s = 0; s < S; ++s)
    for (int m = 0; m < M; ++m) finish(p, w, m, n + s * stride, 0, 0.f);
}

// Weight rows n0..n1 (one thread's): the first S * part in S streams, the rest one at a time.
template <typename T, int M, int S>
void rows_in_streams(int64_t isa, const Problem& p, const T* w, int64_t n0, int64_t n1) {
  const int64_t part = (n1 - n0) / S;
  for (int64_t i = 0; i < part; ++i) block<T, M, S>(isa, p, w, n0 + i, part);
  for (int64_t n = n0 + S * part; n < n1; ++n) block<T, M, 1>(isa, p, w, n, 0);
}
template <typename T, int M>
void rows(int64_t isa, const Problem& p, const T* w, int64_t n0, int64_t n1) {
  if (isa >= kAvx512) rows_in_streams<T, M, kStreamsAvx512>(isa, p, w, n0, n1);
  else rows_in_streams<T, M, kStreamsAvx2<M>>(isa, p, w, n0, n1);
}

// `count` (1..R) rows of x over weight rows n0..n1.
template <typename T, int R>
void row_group(int64_t isa, const Problem& p, const T* w, int64_t n0, int64_t n1, int64_t count) {
  if constexpr (R > 1) {
    if (count < R) return row_group<T, R - 1>(isa, p, w, n0, n1, count);
  }
  rows<T, R>(isa, p, w, n0, n1);
}

// A prompt's M rows over weight rows n0..n1 (one thread's): a cache-sized block of `block` weight rows at a time,
// every group of R rows of x passed over the block while it is in cache. Only the order of the passes differs from
// a decode step's: each output is summed as there. `problem(m0)`: the Problem of the rows from m0 on.
template <typename T, int R, typename ProblemAt>
void prompt_rows(int64_t isa, const ProblemAt& problem, const T* w, int64_t M, int64_t n0, int64_t n1,
                 int64_t block) {
  for (int64_t b0 = n0; b0 < n1; b0 += block)
    for (int64_t m0 = 0; m0 < M; m0 += R)
      row_group<T, R>(isa, problem(m0), w, b0, std::min(n1, b0 + block), std::min<int64_t>(R, M - m0));
}

template <typename T>
at::Tensor gemv(const at::Tensor& weight, const at::Tensor* scale, const at::Tensor& x_in,
                const c10::optional<at::Tensor>& bias_in, int64_t isa) {
  TORCH_CHECK(weight.device().is_cpu() && x_in.device().is_cpu(), "sc2 gemv: CPU tensors only");
  TORCH_CHECK(weight.dim() == 2 && weight.is_contiguous(), "sc2 gemv: the weight must be a contiguous 2-D tensor");
  TORCH_CHECK(at::isFloatingType(x_in.scalar_type()) && x_in.dim() == 2 && x_in.size(1) == weight.size(1),
              "sc2 gemv: x must be floating-point [M, K], K = the weight's columns");
  TORCH_CHECK(isa_supported(isa), "sc2 gemv: this CPU cannot run instruction set ", isa);
  const int64_t N = weight.size(0), M = x_in.size(0);
  if (scale) {
    TORCH_CHECK(scale->scalar_type() == at::kFloat && scale->is_contiguous() && scale->numel() == N,
                "sc2 gemv: the scale must be float32 [N], one per weight row");
  }
  // The rows, the bias and the sums in float32; the result rounded once to x's dtype (as a 16-bit F.linear
  // with its bias rounds it). Converting here costs a fraction of a torch call from Python, per product.
  const at::Tensor x = x_in.scalar_type() == at::kFloat && x_in.stride(1) == 1 ? x_in : x_in.to(at::kFloat).contiguous();
  // bf16 x for the bf16 dot product (bf16 weights only: int8 ones are widened).
  at::Tensor xh;
  if (isa == kAvx512Bf16 && std::is_same_v<T, uint16_t> && x_in.scalar_type() == at::kBFloat16)
    xh = x_in.stride(1) == 1 ? x_in : x_in.contiguous();
  at::Tensor bias;
  if (bias_in.has_value()) {
    TORCH_CHECK(bias_in->numel() == N && at::isFloatingType(bias_in->scalar_type()),
                "sc2 gemv: the bias must be floating-point [N], one per weight row");
    bias = bias_in->to(at::kFloat).contiguous();
  }
  at::Tensor out = at::empty({M, N}, x.options());
  const T* w = reinterpret_cast<const T*>(weight.data_ptr());
  // Each thread takes whole weight rows, at least ~64 KB of them: less, and handing out the work costs more
  // than doing it.
  const int64_t grain = std::max<int64_t>(1, (64 * 1024) / std::max<int64_t>(1, weight.size(1) * sizeof(T)));
  auto problem = [&](int64_t m0) {
    return Problem{weight.size(1), x.stride(0), N, x.data_ptr<float>() + m0 * x.stride(0),
                   xh.defined() ? reinterpret_cast<const uint16_t*>(xh.data_ptr()) + m0 * xh.stride(0) : nullptr,
                   xh.defined() ? xh.stride(0) : 0,
                   scale ? scale->data_ptr<float>() : nullptr, bias.defined() ? bias.data_ptr<float>() : nullptr,
                   out.data_ptr<float>() + m0 * N};
  };
  if (M > kMaxRows) {  // a prompt's rows (see prompt_rows); AVX2's 16 registers hold 6 rows' sums, not more
    const int64_t block = std::max(kBlockRows, kBlockBytes / std::max<int64_t>(1, weight.size(1) * sizeof(T)));
    at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
      if (isa == kAvx2) prompt_rows<T, kPromptRowsAvx2>(isa, problem, w, M, n0, n1, block);
      else prompt_rows<T, kMaxRows>(isa, problem, w, M, n0, n1, block);
    });
  } else if (M > 0) {  // a decode step's rows: one pass over the weights
    at::parallel_for(0, N, grain,
                     [&](int64_t n0, int64_t n1) { row_group<T, kMaxRows>(isa, problem(0), w, n0, n1, M); });
  }
  return x_in.scalar_type() == at::kFloat ? out : out.to(x_in.scalar_type());
}

at::Tensor bf16_gemv(const at::Tensor& weight, const at::Tensor& x, const c10::optional<at::Tensor>& bias,
                     int64_t isa) {
  TORCH_CHECK(weight.scalar_type() == at::kBFloat16, "sc2 bf16_gemv: the weight must be bfloat16");
  return gemv<uint16_t>(weight, nullptr, x, bias, isa);
}

at::Tensor int8_gemv(const at::Tensor& weight, const at::Tensor& scale, const at::Tensor& x,
                     const c10::optional<at::Tensor>& bias, int64_t isa) {
  TORCH_CHECK(weight.scalar_type() == at::kChar, "sc2 int8_gemv: the weight must be int8");
  return gemv<int8_t>(weight, &scale, x, bias, isa);
}

}  // namespace
}  // namespace sc2

TORCH_LIBRARY(sc2, m) {
  m.def("isa_supported(int isa) -> bool", [](int64_t isa) { return sc2::isa_supported(isa); });
  m.def("bf16_gemv(Tensor weight, Tensor x, Tensor? bias, int isa) -> Tensor");
  m.def("int8_gemv(Tensor weight, Tensor scale, Tensor x, Tensor? bias, int isa) -> Tensor");
}

TORCH_LIBRARY_IMPL(sc2, CPU, m) {
  m.impl("bf16_gemv", &sc2::bf16_gemv);
  m.impl("int8_gemv", &sc2::int8_gemv);
}
