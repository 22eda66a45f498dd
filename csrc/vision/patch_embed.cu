// Patch-embedding GEMM on tensor cores: C[M, N] = A[M, K] @ B[K, N] (+ bias), bf16 inputs,
// fp32 accumulation. A is uint8 (raw page levels; the normalization is folded into B and the
// bias) or bf16 (pixel_values, or a gradient in the backward pass); any strides, so the
// backward pass runs on transposed views. 128x128 block tiles, 8 warps of 64x32, WMMA 16x16x16.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <stdexcept>
#include <string>

#include "patch_embed.h"

namespace glyph_rt {
namespace {

using namespace nvcuda;
using bf16 = __nv_bfloat16;

constexpr int BM = 128, BN = 128, BK = 32, PAD = 8, THREADS = 256;
constexpr int WM = 64, WN = 32;  // one warp's tile: 4 x 2 fragments

template <typename T>
__device__ __forceinline__ bf16 to_bf16(T v);
template <>
__device__ __forceinline__ bf16 to_bf16<uint8_t>(uint8_t v) { return __float2bfloat16_rn((float)v); }
template <>
__device__ __forceinline__ bf16 to_bf16<bf16>(bf16 v) { return v; }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ bf16 from_float<bf16>(float v) { return __float2bfloat16_rn(v); }

template <typename TA, typename TC>
__global__ void __launch_bounds__(THREADS) gemm_kernel(GemmArgs g) {
  __shared__ __align__(32) bf16 As[BM][BK + PAD];
  __shared__ __align__(32) bf16 Bs[BK][BN + PAD];
  __shared__ __align__(32) float stage[THREADS / 32][16 * 16];

  const TA* A = static_cast<const TA*>(g.a);
  const bf16* B = static_cast<const bf16*>(g.b);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t m0 = (int64_t)blockIdx.y * BM, n0 = (int64_t)blockIdx.x * BN;
  const int wm = (warp / (BN / WN)) * WM, wn = (warp % (BN / WN)) * WN;

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[WM / 16][WN / 16];
#pragma unroll
  for (int i = 0; i < WM / 16; ++i)
#pragma unroll
    for (int j = 0; j < WN / 16; ++j) wmma::fill_fragment(acc[i][j], 0.f);

  for (int64_t k0 = 0; k0 < g.K; k0 += BK) {
    for (int e = tid; e < BM * BK; e += THREADS) {  // A tile, converted to bf16 on the way in
      const int r = e / BK, c = e % BK;
      const int64_t gm = m0 + r, gk = k0 + c;
      As[r][c] = (gm < g.M && gk < g.K) ? to_bf16<TA>(A[gm * g.sam + gk * g.sak]) : __float2bfloat16_rn(0.f);
    }
    for (int e = tid; e < BK * BN; e += THREADS) {
      const int r = e / BN, c = e % BN;
      const int64_t gk = k0 + r, gn = n0 + c;
      Bs[r][c] = (gk < g.K && gn < g.N) ? B[gk * g.sbk + gn * g.sbn] : __float2bfloat16_rn(0.f);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> fa[WM / 16];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> fb[WN / 16];
#pragma unroll
      for (int i = 0; i < WM / 16; ++i) wmma::load_matrix_sync(fa[i], &As[wm + 16 * i][kk], BK + PAD);
#pragma unroll
      for (int j = 0; j < WN / 16; ++j) wmma::load_matrix_sync(fb[j], &Bs[kk][wn + 16 * j], BN + PAD);
#pragma unroll
      for (int i = 0; i < WM / 16; ++i)
#pragma unroll
        for (int j = 0; j < WN / 16; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
    __syncthreads();
  }

  // epilogue: each warp stages one 16x16 fragment at a time, adds the bias, converts, stores
  const bf16* bias = static_cast<const bf16*>(g.bias);
  TC* C = static_cast<TC*>(g.c);
#pragma unroll
  for (int i = 0; i < WM / 16; ++i) {
#pragma unroll
    for (int j = 0; j < WN / 16; ++j) {
      wmma::store_matrix_sync(stage[warp], acc[i][j], 16, wmma::mem_row_major);
      __syncwarp();
      for (int e = lane; e < 256; e += 32) {
        const int64_t gm = m0 + wm + 16 * i + e / 16, gn = n0 + wn + 16 * j + e % 16;
        if (gm < g.M && gn < g.N) {
          float v = stage[warp][e];
          if (bias) v += __bfloat162float(bias[gn]);
          C[gm * g.scm + gn * g.scn] = from_float<TC>(v);
        }
      }
      __syncwarp();
    }
  }
}

template <typename TA>
void launch(const GemmArgs& g, cudaStream_t s) {
  const dim3 grid((unsigned)((g.N + BN - 1) / BN), (unsigned)((g.M + BM - 1) / BM));
  if (grid.y > 65535) throw std::invalid_argument("gemm_cuda: too many rows for one launch");
  if (g.c_type == 1) gemm_kernel<TA, float><<<grid, THREADS, 0, s>>>(g);
  else if (g.c_type == 2) gemm_kernel<TA, bf16><<<grid, THREADS, 0, s>>>(g);
  else throw std::invalid_argument("gemm_cuda: the output must be float32 or bfloat16");
}

}  // namespace

void gemm_cuda(const GemmArgs& g, void* stream) {
  if (g.M <= 0 || g.N <= 0) return;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (g.a_type == 0) launch<uint8_t>(g, s);
  else if (g.a_type == 2) launch<bf16>(g, s);
  else throw std::invalid_argument("gemm_cuda: A must be uint8 or bfloat16");
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string("gemm_cuda: ") + cudaGetErrorString(err));
}

}  // namespace glyph_rt
