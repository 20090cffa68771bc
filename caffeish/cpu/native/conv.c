/* Direct 2-D convolution for unit strides, compiled on first use (caffeish/cpu/native/__init__.py).
 *
 * Why: on small images (CIFAR-10's 8-32 px, 5x5 kernels) im2col + GEMM spends as long copying the
 * columns, and OpenBLAS's packing of them, as multiplying; oneDNN convolves such shapes at the
 * cores' FMA peak.  Here nothing is copied but the zero-padded image P (C x Hp x Wp, per image).
 *
 * The trick: with unit strides, output (oy, ox) at kernel offset (kh, kw) of channel c reads
 * P[c, (oy + kh dh) Wp + ox + kw dw] = P_flat[c HpWp + n + off(kh, kw)] with n = oy Wp + ox the
 * output's index in the padded grid.  So for a run of VL consecutive n (a "segment"), every row
 * k = (c, kh, kw) of the implicit column matrix is one unaligned vector load from P: the GEMM
 * micro-kernel reads its B operand straight out of the image.  Segments are laid greedily over
 * the valid outputs in padded-grid order; lanes that fall on ox >= Wo (the pad columns) are
 * computed and dropped.
 *
 *   forward:        Y[m, n] = sum_k W[m, k] P[k-offset + n]          (micro-kernel MR x NV vectors)
 *   weight gradient dW[m, k] += sum_n dY[m, n] P[k-offset + n]       (MRW x KR vector dot products)
 *   input gradient: the forward of dY padded by d (k - 1) - pad with the weights flipped in space
 *                   and their channel axes swapped (done by the caller through conv_forward).
 *
 * The arithmetic is GCC/Clang vector extensions, so the same source becomes AVX-512VL, AVX2, SSE
 * or NEON code, whatever -march=native gives.  Every entry point returns 0, or -1 when out of memory.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* sizes and offsets: 64-bit everywhere (a C long is 32-bit on Windows) */
typedef int64_t idx_t;

#ifndef VEC_BYTES
#if defined(__AVX__) || defined(__aarch64__)
#define VEC_BYTES 32
#else
#define VEC_BYTES 16
#endif
#endif

/* Register blocking: accumulators + operands must fit the vector registers (32 with AVX-512 or
 * on aarch64, 16 otherwise; a 32-byte vector is two NEON registers). */
#ifndef MR
#if defined(__AVX512VL__)
#define MR 8
#define NV 3
#define MRW 4
#define KR 5
#else
#define MR 4
#define NV 3
#define MRW 2
#define KR 4
#endif
#endif

#define T float
#define VL (VEC_BYTES / 4)
#define SFX f32
#include "conv_impl.h"
#undef T
#undef VL
#undef SFX

#define T double
#define VL (VEC_BYTES / 8)
#define SFX f64
#include "conv_impl.h"

int caffeish_native_vector_bytes(void) { return VEC_BYTES; }
