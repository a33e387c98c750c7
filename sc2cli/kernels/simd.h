// What the kernels share: the instruction-set codes, widening 16- and 8-bit values to float32 (one value, 8 or 16
// at a time) and horizontal sums, each compiled for its instruction set with gcc's `target` attribute so that
// one library holds the AVX2, AVX-512 and scalar code and the caller picks at run time (sc2cli.kernels).
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace sc2 {

// Levels: each runs the code of the levels below it too (kAvx512Bf16 is kAvx512 plus the bf16 dot product).
enum Isa : int64_t { kScalar = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3 };

// Whether this CPU can run `isa`'s code.
inline bool isa_supported(int64_t isa) {
  __builtin_cpu_init();
  if (isa == kAvx512Bf16) return isa_supported(kAvx512) && __builtin_cpu_supports("avx512bf16");
  if (isa == kAvx512) return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  if (isa == kAvx2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return isa == kScalar;
}

// bf16 is the top half of a float32: widening is a shift.
inline float widen(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline float widen(int8_t v) { return static_cast<float>(v); }
inline float widen(float v) { return v; }

// 8 values widened to float32 (AVX2), 16 (AVX-512).
__attribute__((target("avx2,fma"))) inline __m256 load8(const uint16_t* p) {
  __m128i half = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(half), 16));
}
__attribute__((target("avx2,fma"))) inline __m256 load8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
__attribute__((target("avx2,fma"))) inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
__attribute__((target("avx512f,avx512bw"))) inline __m512 load16(const uint16_t* p) {
  __m256i half = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
}
__attribute__((target("avx512f,avx512bw"))) inline __m512 load16(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
__attribute__((target("avx512f,avx512bw"))) inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }

__attribute__((target("avx2,fma"))) inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
__attribute__((target("avx512f,avx512bw"))) inline float hsum(__m512 v) { return _mm512_reduce_add_ps(v); }

}  // namespace sc2
