// Decode attention: one new query per sequence and head over the KV cache, computed in float32 whatever the
// cache stores (bf16 or float32): out[b, h] = softmax(q[b, h] . K[b, h / G] * scale + mask[b]) V[b, h / G],
// with G query heads sharing each key/value head (grouped-query attention).
//
// Why a kernel: torch does this as two small matmuls, a softmax and half a dozen conversions per layer. On a
// CPU with bf16 arithmetic (measured on the ~180M shape, 640 cached tokens) the two bf16 matmuls alone took 1.7 ms
// of a 12 ms decode step; on one without (AVX2) torch's bf16 matmul has no fast kernel at all and every cache had
// to be copied to float32 first. Here each cached key and value is widened to float32 once, as it is read, for
// all the query heads of its group.
//
// Keys whose mask value is at or below kExcluded (the cache's masks use the dtype's minimum for slots that are
// empty, padding or outside the sliding window) are not read: their weight would be exp(-3e38) = 0 in float32.
// (The bf16 dot product's scores read 16 keys at a time and skip a block only when all 16 are excluded; an
// excluded key's score is still -inf whatever the slot holds, since its sum is reduced in a lane of its own.)
// A row whose every key is excluded gets zeros (a decode query always sees at least its own key).
//
// Every output is computed by one thread in an order fixed by the cache's length alone: a row's numbers never
// depend on the other rows or the thread count.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "simd.h"

namespace sc2 {
namespace {

constexpr float kExcluded = -1e30f;
constexpr int64_t kMaxGroup = 64;  // query heads per key/value head
// exp(x) for x below this underflows float32's normal range: the weight is taken as 0.
constexpr float kExpFloor = -87.3f;
// exp(x) = 2^n * exp(r), x = n ln2 + r, |r| <= ln2 / 2; ln2 in two parts so that n ln2 is exact (Cephes' split).
constexpr float kLog2e = 1.44269504f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
// exp(r)'s Taylor series to r^7: relative error below 1e-8 on |r| <= ln2 / 2, under float32's rounding.
constexpr float kExpCoef[] = {1.f, 1.f, 1.f / 2, 1.f / 6, 1.f / 24, 1.f / 120, 1.f / 720, 1.f / 5040};

__attribute__((target("avx2,fma"))) inline __m256 exp8(__m256 x) {
  const __m256 floor = _mm256_set1_ps(kExpFloor);
  const __m256 under = _mm256_cmp_ps(x, floor, _CMP_LT_OQ);
  x = _mm256_max_ps(x, floor);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
  __m256 p = _mm256_set1_ps(kExpCoef[7]);
  for (int i = 6; i >= 0; --i) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpCoef[i]));
  const __m256i exponent = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(exponent)));
}

__attribute__((target("avx512f,avx512bw"))) inline __m512 exp16(__m512 x) {
  const __m512 floor = _mm512_set1_ps(kExpFloor);
  const __mmask16 under = _mm512_cmp_ps_mask(x, floor, _CMP_LT_OQ);
  x = _mm512_max_ps(x, floor);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
  __m512 p = _mm512_set1_ps(kExpCoef[7]);
  for (int i = 6; i >= 0; --i) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpCoef[i]));
  return _mm512_maskz_mov_ps(static_cast<__mmask16>(~under), _mm512_scalef_ps(p, n));
}

// The two passes over the cache, per instruction set, each a whole loop over the keys inside one function (so
// that the vector code is inlined and pipelined, not called per key):
// - scores[g, j] = q[g] . k[j] * scale + mask[j], or -inf for an excluded key: a cached key is widened once and
//   used for all G query heads of its group, in registers. With AVX-512 BF16, a bf16 cache and bf16 q: the bf16
//   dot product on the cached keys as they are, 16 keys at a time, each head's 16 sums reduced together (a
//   3B-shaped layer at 4,096 cached tokens, 2 threads: 364 -> 282 us, at 640: 62 -> 49);
// - acc[g] += w[g, j] * v[j] over the keys that are not excluded, kBlock keys at a time: their values are widened
//   once into a float32 block that stays in L1 while each query head adds them up in registers (its sums in the
//   order of j, as a plain loop would add them, but with no store and reload per key).
// The AVX2 and AVX-512 loops are the same code at two vector widths, kept as two functions for the reason
// gemv.cpp gives: gcc inlines intrinsics only into a function carrying their own target attribute (and one
// built for AVX-512 may use its registers in code meant for AVX2 CPUs).
template <typename T>
struct Group {
  int64_t G, D, L, key_stride, value_stride;
  float scale;
  const float* q;     // [G, D]
  const uint16_t* qh;  // the same in bf16 where q came in bf16 and the bf16 dot product is used, else nullptr
  const T* keys;      // key j at keys + j * key_stride
  const T* values;
  const float* mask;  // [L] or nullptr
  bool excluded(int64_t j) const { return mask && mask[j] <= kExcluded; }
};

template <typename T>
void scores_scalar(const Group<T>& a, float* scores) {
  for (int64_t j = 0; j < a.L; ++j)
    for (int64_t g = 0; g < a.G; ++g) {
      float s = -std::numeric_limits<float>::infinity();
      if (!a.excluded(j)) {
        s = 0.f;
        for (int64_t d = 0; d < a.D; ++d) s += a.q[g * a.D + d] * widen(a.keys[j * a.key_stride + d]);
        s = s * a.scale + (a.mask ? a.mask[j] : 0.f);
      }
      scores[g * a.L + j] = s;
    }
}
template <typename T>
void accumulate_scalar(const Group<T>& a, const float* weights, float* acc) {
  for (int64_t j = 0; j < a.L; ++j) {
    if (a.excluded(j)) continue;
    for (int64_t g = 0; g < a.G; ++g)
      for (int64_t d = 0; d < a.D; ++d) acc[g * a.D + d] += weights[g * a.L + j] * widen(a.values[j * a.value_stride + d]);
  }
}

// Head sizes up to kMaxChunks vectors keep a key or value in registers; other sizes take the scalar loops.
constexpr int64_t kMaxChunks = 16;
// Keys per block of the accumulation (kBlock x D floats: at most 32 KB), and the vector sums kept in registers.
constexpr int64_t kBlock = 32;
constexpr int64_t kSumRegisters = 8;
// Keys per block of the AVX-512 scores pass (one vector of scores).
constexpr int64_t kKeysPerScoreBlock = 16;

template <typename T>
__attribute__((target("avx2,fma"))) void scores_avx2(const Group<T>& a, float* scores) {
  const int64_t chunks = a.D / 8;
  __m256 k[kMaxChunks];
  for (int64_t j = 0; j < a.L; ++j) {
    if (a.excluded(j)) {
      for (int64_t g = 0; g < a.G; ++g) scores[g * a.L + j] = -std::numeric_limits<float>::infinity();
      continue;
    }
    const T* key = a.keys + j * a.key_stride;
    for (int64_t c = 0; c < chunks; ++c) k[c] = load8(key + 8 * c);
    for (int64_t g = 0; g < a.G; ++g) {
      const float* q = a.q + g * a.D;
      __m256 sum = _mm256_mul_ps(_mm256_loadu_ps(q), k[0]);
      for (int64_t c = 1; c < chunks; ++c) sum = _mm256_fmadd_ps(_mm256_loadu_ps(q + 8 * c), k[c], sum);
      scores[g * a.L + j] = hsum(sum) * a.scale + (a.mask ? a.mask[j] : 0.f);
    }
  }
}
// N: the vector sums per pass at compile time (so that they stay in registers), or 0: at run time (see
// sums_per_pass).
template <typename T, int N>
__attribute__((target("avx2,fma"))) void accumulate_avx2(const Group<T>& a, const float* weights, float* acc,
                                                         float* block) {
  const int64_t chunks = a.D / 8;
  for (int64_t j0 = 0; j0 < a.L; j0 += kBlock) {
    const int64_t count = std::min(kBlock, a.L - j0);
    for (int64_t j = 0; j < count; ++j) {
      if (a.excluded(j0 + j)) continue;
      const T* value = a.values + (j0 + j) * a.value_stride;
      for (int64_t c = 0; c < chunks; ++c) _mm256_storeu_ps(block + j * a.D + 8 * c, load8(value + 8 * c));
    }
    for (int64_t g = 0; g < a.G; ++g) {
      float* out = acc + g * a.D;
      const float* w = weights + g * a.L + j0;
      for (int64_t c0 = 0; c0 < chunks; c0 += kSumRegisters) {
        const int64_t n = N ? N : std::min(kSumRegisters, chunks - c0);
        __m256 sum[kSumRegisters];
#pragma GCC unroll 8
        for (int64_t c = 0; c < n; ++c) sum[c] = _mm256_loadu_ps(out + 8 * (c0 + c));
        for (int64_t j = 0; j < count; ++j) {
          if (w[j] == 0.f) continue;  // (every excluded key's weight is 0, and its block row was not written)
          const __m256 wj = _mm256_set1_ps(w[j]);
          const float* v = block + j * a.D + 8 * c0;
#pragma GCC unroll 8
          for (int64_t c = 0; c < n; ++c) sum[c] = _mm256_fmadd_ps(wj, _mm256_loadu_ps(v + 8 * c), sum[c]);
        }
#pragma GCC unroll 8
        for (int64_t c = 0; c < n; ++c) _mm256_storeu_ps(out + 8 * (c0 + c), sum[c]);
      }
    }
  }
}

// Lane i of the result = the sum of v[i]'s 16 values: 16 reductions at once in 45 operations (pairs of vectors
// interleaved and added, then 128-bit lanes exchanged and added), where one reduction alone takes about 8. Each
// lane adds only its own vector's values, so a key's score never depends on the keys beside it.
__attribute__((target("avx512f,avx512bw"))) inline __m512 hsum16(const __m512* v) {
  __m512 t[8], w[4];
  for (int i = 0; i < 8; ++i)
    t[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 4; ++i)
    w[i] = _mm512_add_ps(_mm512_shuffle_ps(t[2 * i], t[2 * i + 1], 0x44), _mm512_shuffle_ps(t[2 * i], t[2 * i + 1], 0xEE));
  const __m512 x = _mm512_add_ps(_mm512_shuffle_f32x4(w[0], w[1], 0x88), _mm512_shuffle_f32x4(w[0], w[1], 0xDD));
  const __m512 y = _mm512_add_ps(_mm512_shuffle_f32x4(w[2], w[3], 0x88), _mm512_shuffle_f32x4(w[2], w[3], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(x, y, 0x88), _mm512_shuffle_f32x4(x, y, 0xDD));
}

// Scores of 16 keys for one query head from their dot products' vector sums: scaled, masked, stored. An excluded
// key's score is -inf whatever its lane holds (its own key's sum alone, even if that slot held NaN).
template <typename T>
__attribute__((target("avx512f,avx512bw"))) inline void store_scores(const Group<T>& a, __m512 sums, int64_t g,
                                                                     int64_t j0, int64_t count, float* scores) {
  alignas(64) float r[kKeysPerScoreBlock];
  _mm512_store_ps(r, sums);
  for (int64_t j = 0; j < count; ++j)
    scores[g * a.L + j0 + j] = a.excluded(j0 + j) ? -std::numeric_limits<float>::infinity()
                                                  : r[j] * a.scale + (a.mask ? a.mask[j0 + j] : 0.f);
}

// Whether keys j0..j0+count are all excluded (a block outside the window, or empty ring slots): then not read.
template <typename T>
inline bool all_excluded(const Group<T>& a, int64_t j0, int64_t count) {
  if (!a.mask) return false;
  for (int64_t j = 0; j < count; ++j)
    if (!a.excluded(j0 + j)) return false;
  return true;
}
template <typename T>
inline void exclude_block(const Group<T>& a, int64_t j0, int64_t count, float* scores) {
  for (int64_t g = 0; g < a.G; ++g)
    std::fill(scores + g * a.L + j0, scores + g * a.L + j0 + count, -std::numeric_limits<float>::infinity());
}

// One key at a time, widened into registers once for the G query heads of its group.
template <typename T>
__attribute__((target("avx512f,avx512bw"))) void scores_avx512(const Group<T>& a, float* scores) {
  const int64_t chunks = a.D / 16;
  __m512 k[kMaxChunks];
  for (int64_t j = 0; j < a.L; ++j) {
    if (a.excluded(j)) {
      for (int64_t g = 0; g < a.G; ++g) scores[g * a.L + j] = -std::numeric_limits<float>::infinity();
      continue;
    }
    const T* key = a.keys + j * a.key_stride;
    for (int64_t c = 0; c < chunks; ++c) k[c] = load16(key + 16 * c);
    for (int64_t g = 0; g < a.G; ++g) {
      const float* q = a.q + g * a.D;
      __m512 sum = _mm512_mul_ps(_mm512_loadu_ps(q), k[0]);
      for (int64_t c = 1; c < chunks; ++c) sum = _mm512_fmadd_ps(_mm512_loadu_ps(q + 16 * c), k[c], sum);
      scores[g * a.L + j] = hsum(sum) * a.scale + (a.mask ? a.mask[j] : 0.f);
    }
  }
}
// With the bf16 dot product, where the cache and q are bf16 (AVX-512 BF16): 16 keys at a time, read as they are
// (no widening) for each query head in turn (they stay in L1 for the group), and each head's 16 dot products
// reduced together. C = D / 32 at compile time (so that the sums stay in registers), or 0: at run time.
template <int C>
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void scores_avx512bf16(const Group<uint16_t>& a,
                                                                              float* scores) {
  const int64_t chunks = C ? C : a.D / 32;
  for (int64_t j0 = 0; j0 < a.L; j0 += kKeysPerScoreBlock) {
    const int64_t count = std::min(kKeysPerScoreBlock, a.L - j0);
    if (all_excluded(a, j0, count)) {
      exclude_block(a, j0, count, scores);
      continue;
    }
    for (int64_t g = 0; g < a.G; ++g) {
      __m512bh q[kMaxChunks / 2];
      for (int64_t c = 0; c < chunks; ++c) q[c] = (__m512bh)_mm512_loadu_si512(a.qh + g * a.D + 32 * c);
      __m512 sums[kKeysPerScoreBlock];
#pragma GCC unroll 16
      for (int64_t j = 0; j < kKeysPerScoreBlock; ++j) {
        __m512 sum = _mm512_setzero_ps();
        if (j < count) {
          const uint16_t* key = a.keys + (j0 + j) * a.key_stride;
#pragma GCC unroll 8
          for (int64_t c = 0; c < chunks; ++c)
            sum = _mm512_dpbf16_ps(sum, (__m512bh)_mm512_loadu_si512(key + 32 * c), q[c]);
        }
        sums[j] = sum;
      }
      store_scores(a, hsum16(sums), g, j0, count, scores);
    }
  }
}
// N as for accumulate_avx2.
template <typename T, int N>
__attribute__((target("avx512f,avx512bw"))) void accumulate_avx512(const Group<T>& a, const float* weights,
                                                                   float* acc, float* block) {
  const int64_t chunks = a.D / 16;
  for (int64_t j0 = 0; j0 < a.L; j0 += kBlock) {
    const int64_t count = std::min(kBlock, a.L - j0);
    for (int64_t j = 0; j < count; ++j) {
      if (a.excluded(j0 + j)) continue;
      const T* value = a.values + (j0 + j) * a.value_stride;
      for (int64_t c = 0; c < chunks; ++c) _mm512_storeu_ps(block + j * a.D + 16 * c, load16(value + 16 * c));
    }
    for (int64_t g = 0; g < a.G; ++g) {
      float* out = acc + g * a.D;
      const float* w = weights + g * a.L + j0;
      for (int64_t c0 = 0; c0 < chunks; c0 += kSumRegisters) {
        const int64_t n = N ? N : std::min(kSumRegisters, chunks - c0);
        __m512 sum[kSumRegisters];
#pragma GCC unroll 8
        for (int64_t c = 0; c < n; ++c) sum[c] = _mm512_loadu_ps(out + 16 * (c0 + c));
        for (int64_t j = 0; j < count; ++j) {
          if (w[j] == 0.f) continue;  // (every excluded key's weight is 0, and its block row was not written)
          const __m512 wj = _mm512_set1_ps(w[j]);
          const float* v = block + j * a.D + 16 * c0;
#pragma GCC unroll 8
          for (int64_t c = 0; c < n; ++c) sum[c] = _mm512_fmadd_ps(wj, _mm512_loadu_ps(v + 16 * c), sum[c]);
        }
#pragma GCC unroll 8
        for (int64_t c = 0; c < n; ++c) _mm512_storeu_ps(out + 16 * (c0 + c), sum[c]);
      }
    }
  }
}

// s[j] = exp(s[j] - max) in place; returns their sum.
float softmax_exp_scalar(float* s, int64_t L, float max) {
  float sum = 0.f;
  for (int64_t j = 0; j < L; ++j) sum += (s[j] = s[j] - max < kExpFloor ? 0.f : std::exp(s[j] - max));
  return sum;
}
__attribute__((target("avx2,fma"))) float softmax_exp_avx2(float* s, int64_t L, float max) {
  const __m256 m = _mm256_set1_ps(max);
  __m256 acc = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= L; j += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), m));
    _mm256_storeu_ps(s + j, e);
    acc = _mm256_add_ps(acc, e);
  }
  float sum = hsum(acc);
  for (; j < L; ++j) sum += (s[j] = s[j] - max < kExpFloor ? 0.f : std::exp(s[j] - max));
  return sum;
}
__attribute__((target("avx512f,avx512bw"))) float softmax_exp_avx512(float* s, int64_t L, float max) {
  const __m512 m = _mm512_set1_ps(max);
  __m512 acc = _mm512_setzero_ps();
  int64_t j = 0;
  for (; j + 16 <= L; j += 16) {
    const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(s + j), m));
    _mm512_storeu_ps(s + j, e);
    acc = _mm512_add_ps(acc, e);
  }
  float sum = hsum(acc);
  for (; j < L; ++j) sum += (s[j] = s[j] - max < kExpFloor ? 0.f : std::exp(s[j] - max));
  return sum;
}

template <typename T>
void score(int64_t isa, bool vector, const Group<T>& group, float* scores) {
  if constexpr (std::is_same_v<T, uint16_t>) {
    if (group.qh) {
      if (group.D == 128) return scores_avx512bf16<4>(group, scores);
      if (group.D == 64) return scores_avx512bf16<2>(group, scores);
      return scores_avx512bf16<0>(group, scores);
    }
  }
  if (vector && isa >= kAvx512) return scores_avx512(group, scores);
  if (vector) scores_avx2(group, scores);
  else scores_scalar(group, scores);
}

// The accumulation's sums per pass, when every pass has the same count (the head size is a multiple of
// kSumRegisters vectors, or a single pass of 4): then it is a template argument, else 0 (counted at run time).
inline int sums_per_pass(int64_t chunks) {
  return chunks % kSumRegisters == 0 ? kSumRegisters : chunks == 4 ? 4 : 0;
}

template <typename T>
void accumulate(int64_t isa, const Group<T>& group, const float* weights, float* acc, float* block) {
  const int n = sums_per_pass(group.D / (isa >= kAvx512 ? 16 : 8));
  if (isa >= kAvx512) {
    if (n == 8) return accumulate_avx512<T, 8>(group, weights, acc, block);
    if (n == 4) return accumulate_avx512<T, 4>(group, weights, acc, block);
    return accumulate_avx512<T, 0>(group, weights, acc, block);
  }
  if (n == 8) return accumulate_avx2<T, 8>(group, weights, acc, block);
  if (n == 4) return accumulate_avx2<T, 4>(group, weights, acc, block);
  accumulate_avx2<T, 0>(group, weights, acc, block);
}

template <typename T>
struct Problem {
  int64_t H, G, D, L;
  float scale;
  const float* q;     // [B, H, D], contiguous
  const uint16_t* qh;  // q in bf16 [B, H, D] for the bf16 dot product, or nullptr
  const T* keys;      // [B, KV, L, D], rows of D contiguous, strides below
  const T* values;
  int64_t k_stride[3], v_stride[3];  // batch, head, position
  const float* mask;  // [B or 1, L] contiguous, or nullptr
  int64_t mask_rows;
  float* out;         // [B, H, D], contiguous
};

template <typename T>
void attend(int64_t isa, const Problem<T>& p, int64_t b, int64_t kv, std::vector<float>& scratch) {
  const int64_t G = p.G, D = p.D, L = p.L;
  const Group<T> group{G, D, L, p.k_stride[2], p.v_stride[2], p.scale, p.q + (b * p.H + kv * G) * D,
                       p.qh ? p.qh + (b * p.H + kv * G) * D : nullptr,
                       p.keys + b * p.k_stride[0] + kv * p.k_stride[1],
                       p.values + b * p.v_stride[0] + kv * p.v_stride[1],
                       p.mask ? p.mask + (p.mask_rows == 1 ? 0 : b) * L : nullptr};
  scratch.resize(G * L + G * D + kBlock * D);
  float* scores = scratch.data();  // [G, L]: the scores (every one written below), then the softmax's weights
  float* acc = scores + G * L;     // [G, D]: the only part that must start at zero
  float* block = acc + G * D;      // [kBlock, D]: values widened for the accumulation (written before read)
  std::fill(acc, acc + G * D, 0.f);
  const int64_t width = isa >= kAvx512 ? 16 : isa == kAvx2 ? 8 : 0;
  const bool vector = width && D % width == 0 && D / width <= kMaxChunks;

  score(isa, vector, group, scores);
  float sums[kMaxGroup];
  for (int64_t g = 0; g < G; ++g) {
    float* s = scores + g * L;
    float max = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < L; ++j) max = std::max(max, s[j]);
    if (max == -std::numeric_limits<float>::infinity()) {  // every key excluded: zeros
      std::fill(s, s + L, 0.f);
      sums[g] = 0.f;
      continue;
    }
    sums[g] = isa >= kAvx512 ? softmax_exp_avx512(s, L, max) : isa == kAvx2 ? softmax_exp_avx2(s, L, max)
                                                                            : softmax_exp_scalar(s, L, max);
  }
  if (vector) accumulate(isa, group, scores, acc, block);
  else accumulate_scalar(group, scores, acc);
  for (int64_t g = 0; g < G; ++g) {
    const float inverse = sums[g] > 0.f ? 1.f / sums[g] : 0.f;
    float* out = p.out + (b * p.H + kv * G + g) * D;
    for (int64_t d = 0; d < D; ++d) out[d] = acc[g * D + d] * inverse;
  }
}

at::Tensor decode_attention(const at::Tensor& q_in, const at::Tensor& keys, const at::Tensor& values,
                            const c10::optional<at::Tensor>& mask_in, double scale, int64_t isa) {
  TORCH_CHECK(q_in.device().is_cpu() && keys.device().is_cpu() && values.device().is_cpu(),
              "sc2 decode_attention: CPU tensors only");
  TORCH_CHECK(q_in.dim() == 3 && at::isFloatingType(q_in.scalar_type()),
              "sc2 decode_attention: q must be floating-point [B, H, D]");
  TORCH_CHECK(keys.dim() == 4 && keys.sizes() == values.sizes() && keys.scalar_type() == values.scalar_type(),
              "sc2 decode_attention: keys and values must be [B, KV, L, D] of one shape and dtype");
  TORCH_CHECK(keys.scalar_type() == at::kBFloat16 || keys.scalar_type() == at::kFloat,
              "sc2 decode_attention: the cache must be bfloat16 or float32");
  TORCH_CHECK(keys.stride(3) == 1 && values.stride(3) == 1,
              "sc2 decode_attention: each cached key and value must be contiguous");
  const int64_t B = q_in.size(0), H = q_in.size(1), D = q_in.size(2), KV = keys.size(1), L = keys.size(2);
  TORCH_CHECK(keys.size(0) == B && keys.size(3) == D && KV > 0 && H % KV == 0,
              "sc2 decode_attention: q [B, H, D] and the cache [B, KV, L, D] disagree (H must be a multiple of KV)");
  TORCH_CHECK(H / KV <= kMaxGroup, "sc2 decode_attention: at most ", kMaxGroup, " query heads per key/value head");
  TORCH_CHECK(isa_supported(isa), "sc2 decode_attention: this CPU cannot run instruction set ", isa);
  at::Tensor mask;
  if (mask_in.has_value()) {
    TORCH_CHECK(mask_in->dim() == 2 && (mask_in->size(0) == 1 || mask_in->size(0) == B) && mask_in->size(1) == L &&
                    at::isFloatingType(mask_in->scalar_type()),
                "sc2 decode_attention: the mask must be an additive floating-point [B or 1, L]");
    mask = mask_in->to(at::kFloat).contiguous();
  }
  const at::Tensor q = q_in.to(at::kFloat).contiguous();
  // The bf16 dot product for the scores: a bf16 cache and bf16 q, head sizes in whole 32-value pieces.
  const bool dot = isa == kAvx512Bf16 && keys.scalar_type() == at::kBFloat16 && q_in.scalar_type() == at::kBFloat16 &&
                   D % 32 == 0 && D / 32 <= kMaxChunks / 2;
  const at::Tensor qh = dot ? q_in.contiguous() : at::Tensor();
  at::Tensor out = at::empty({B, H, D}, q.options());

  const auto run = [&](auto tag) {
    using T = decltype(tag);
    const Problem<T> p{H, H / KV, D, L, static_cast<float>(scale), q.data_ptr<float>(),
                       dot ? reinterpret_cast<const uint16_t*>(qh.data_ptr()) : nullptr,
                       reinterpret_cast<const T*>(keys.data_ptr()), reinterpret_cast<const T*>(values.data_ptr()),
                       {keys.stride(0), keys.stride(1), keys.stride(2)},
                       {values.stride(0), values.stride(1), values.stride(2)},
                       mask.defined() ? mask.data_ptr<float>() : nullptr, mask.defined() ? mask.size(0) : 0,
                       out.data_ptr<float>()};
    at::parallel_for(0, B * KV, 1, [&](int64_t t0, int64_t t1) {
      std::vector<float> scratch;
      for (int64_t t = t0; t < t1; ++t) attend(isa, p, t / KV, t % KV, scratch);
    });
  };
  if (keys.scalar_type() == at::kBFloat16) run(uint16_t{});
  else run(float{});
  return q_in.scalar_type() == at::kFloat ? out : out.to(q_in.scalar_type());
}

}  // namespace
}  // namespace sc2

TORCH_LIBRARY_FRAGMENT(sc2, m) {
  m.def("decode_attention(Tensor q, Tensor keys, Tensor values, Tensor? mask, float scale, int isa) -> Tensor");
}

TORCH_LIBRARY_IMPL(sc2, CPU, m) { m.impl("decode_attention", &sc2::decode_attention); }
