// Patch-embedding GEMM on tensor cores: C[M, N] = A[M, K] @ B[K, N] (+ bias), bf16 inputs,
// fp32 accumulation. A is uint8 (raw page levels; the normalization is folded into B and the
// bias) or bf16 (pixel_values, or a gradient in the backward pass). 128x128 block tiles, 8 warps
// of 64x32, WMMA 16x16x16.
//
// Two kernels. gemm_tiled: the forward pass ([N, 592] uint8 or [N, 1176] bf16 rows @ a row-major
// [K, N] weight): coalesced 16-byte loads, the next K step's tiles loaded while the tensor cores
// work on this one (double-buffered shared memory; cp.async for bf16 tiles, registers for uint8
// tiles, which are converted to bf16 on the way to shared memory). gemm_any: any strides (the
// backward pass on transposed views), one element per load.
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

constexpr int BM = 128, BN = 128, THREADS = 256;

// bf16 WMMA fragments and cp.async need sm_80: for an older architecture in the build list the kernels
// compile to a trap (the launcher refuses such a GPU first), so that the rest of the extension still builds
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define GLYPH_RT_NO_BF16_MMA 1
#endif

#ifndef GLYPH_RT_NO_BF16_MMA
constexpr int BK = 32, PAD = 8;
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

// 16 bytes global -> shared without passing through registers; zero-fills when !pred (src must
// still be a valid address).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool pred) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(pred ? 16 : 0) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

using Acc = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

// acc += As[wm.., :] @ Bs[:, wn..] over one BK step
template <int LDA, int LDB>
__device__ __forceinline__ void mma_step(Acc (&acc)[WM / 16][WN / 16], const bf16* As, const bf16* Bs, int wm,
                                         int wn) {
#pragma unroll
  for (int kk = 0; kk < BK; kk += 16) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> fa[WM / 16];
    wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> fb[WN / 16];
#pragma unroll
    for (int i = 0; i < WM / 16; ++i) wmma::load_matrix_sync(fa[i], As + (wm + 16 * i) * LDA + kk, LDA);
#pragma unroll
    for (int j = 0; j < WN / 16; ++j) wmma::load_matrix_sync(fb[j], Bs + kk * LDB + wn + 16 * j, LDB);
#pragma unroll
    for (int i = 0; i < WM / 16; ++i)
#pragma unroll
      for (int j = 0; j < WN / 16; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
  }
}

// each warp stages one 16x16 fragment at a time, adds the bias, converts, stores
template <typename TC>
__device__ __forceinline__ void epilogue(const GemmArgs& g, Acc (&acc)[WM / 16][WN / 16], float* stage, int64_t m0,
                                         int64_t n0, int wm, int wn, int lane) {
  const bf16* bias = static_cast<const bf16*>(g.bias);
  TC* C = static_cast<TC*>(g.c);
#pragma unroll
  for (int i = 0; i < WM / 16; ++i) {
#pragma unroll
    for (int j = 0; j < WN / 16; ++j) {
      wmma::store_matrix_sync(stage, acc[i][j], 16, wmma::mem_row_major);
      __syncwarp();
      for (int e = lane; e < 256; e += 32) {
        const int64_t gm = m0 + wm + 16 * i + e / 16, gn = n0 + wn + 16 * j + e % 16;
        if (gm < g.M && gn < g.N) {
          float v = stage[e];
          if (bias) v += __bfloat162float(bias[gn]);
          C[gm * g.scm + gn * g.scn] = from_float<TC>(v);
        }
      }
      __syncwarp();
    }
  }
}

// Needs (checked by the launcher): B row-major (sbn 1) with sbk and N multiples of 8; A row-major
// (sak 1) with sam and K multiples of 16 bytes' worth of elements; 16-byte aligned pointers.
template <typename TA, typename TC>
__global__ void __launch_bounds__(THREADS, 1) gemm_tiled(GemmArgs g) {
  constexpr int LDA = BK + PAD, LDB = BN + PAD;  // rows of 80 and 272 bytes: 16-byte aligned
  __shared__ __align__(128) bf16 As[2][BM * LDA];
  __shared__ __align__(128) bf16 Bs[2][BK * LDB];
  __shared__ __align__(32) float stage[THREADS / 32][16 * 16];

  const TA* A = static_cast<const TA*>(g.a);
  const bf16* B = static_cast<const bf16*>(g.b);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t m0 = (int64_t)blockIdx.y * BM, n0 = (int64_t)blockIdx.x * BN;
  const int wm = (warp / (BN / WN)) * WM, wn = (warp % (BN / WN)) * WN;

  // B tile: BK x BN bf16 = 512 chunks of 8 columns, 2 per thread, consecutive threads along N
  auto load_b = [&](int buf, int64_t k0) {
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      const int c = tid + q * THREADS, r = c / (BN / 8), col = (c % (BN / 8)) * 8;
      const int64_t gk = k0 + r, gn = n0 + col;
      const bool ok = gk < g.K && gn < g.N;
      cp_async16(&Bs[buf][r * LDB + col], ok ? B + gk * g.sbk + gn : B, ok);
    }
  };
  // A tile, bf16: BM x BK = 512 chunks of 8, 2 per thread
  auto load_a_bf16 = [&](int buf, int64_t k0) {
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      const int c = tid + q * THREADS, r = c / (BK / 8), col = (c % (BK / 8)) * 8;
      const int64_t gm = m0 + r, gk = k0 + col;
      const bool ok = gm < g.M && gk < g.K;
      const bf16* src = reinterpret_cast<const bf16*>(A);
      cp_async16(&As[buf][r * LDA + col], ok ? src + gm * g.sam + gk : src, ok);
    }
  };
  // A tile, uint8: BM x BK = 256 chunks of 16 bytes, one per thread, through registers
  const int ar = tid / (BK / 16), ac = (tid % (BK / 16)) * 16;
  auto fetch_a_u8 = [&](int64_t k0) {
    const int64_t gm = m0 + ar, gk = k0 + ac;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (gm < g.M && gk < g.K)
      v = *reinterpret_cast<const uint4*>(reinterpret_cast<const uint8_t*>(A) + gm * g.sam + gk);
    return v;
  };
  auto store_a_u8 = [&](int buf, uint4 v) {  // 16 levels -> 16 bf16 (exact: the top 16 bits of the float)
    auto pair = [](uint32_t x) {
      return (__float_as_uint((float)(x & 255)) >> 16) | (__float_as_uint((float)((x >> 8) & 255)) & 0xffff0000u);
    };
    uint4* dst = reinterpret_cast<uint4*>(&As[buf][ar * LDA + ac]);
    dst[0] = make_uint4(pair(v.x), pair(v.x >> 16), pair(v.y), pair(v.y >> 16));
    dst[1] = make_uint4(pair(v.z), pair(v.z >> 16), pair(v.w), pair(v.w >> 16));
  };
  constexpr bool U8 = sizeof(TA) == 1;

  Acc acc[WM / 16][WN / 16];
#pragma unroll
  for (int i = 0; i < WM / 16; ++i)
#pragma unroll
    for (int j = 0; j < WN / 16; ++j) wmma::fill_fragment(acc[i][j], 0.f);

  const int64_t nk = (g.K + BK - 1) / BK;
  load_b(0, 0);
  if constexpr (U8) store_a_u8(0, fetch_a_u8(0));
  else load_a_bf16(0, 0);
  cp_async_commit();
  cp_async_wait_all();
  __syncthreads();
  for (int64_t kt = 0; kt < nk; ++kt) {
    const int cur = kt & 1, nxt = cur ^ 1;
    const bool more = kt + 1 < nk;
    uint4 a_next = make_uint4(0, 0, 0, 0);
    if (more) {  // the next step's loads fly while this step computes
      load_b(nxt, (kt + 1) * BK);
      if constexpr (U8) a_next = fetch_a_u8((kt + 1) * BK);
      else load_a_bf16(nxt, (kt + 1) * BK);
    }
    cp_async_commit();
    mma_step<LDA, LDB>(acc, As[cur], Bs[cur], wm, wn);
    if constexpr (U8)
      if (more) store_a_u8(nxt, a_next);
    cp_async_wait_all();
    __syncthreads();
  }
  epilogue<TC>(g, acc, stage[warp], m0, n0, wm, wn, lane);
}

template <typename TA, typename TC>
__global__ void __launch_bounds__(THREADS, 1) gemm_any(GemmArgs g) {
  constexpr int LDA = BK + PAD, LDB = BN + PAD;
  __shared__ __align__(128) bf16 As[BM * LDA];
  __shared__ __align__(128) bf16 Bs[BK * LDB];
  __shared__ __align__(32) float stage[THREADS / 32][16 * 16];

  const TA* A = static_cast<const TA*>(g.a);
  const bf16* B = static_cast<const bf16*>(g.b);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t m0 = (int64_t)blockIdx.y * BM, n0 = (int64_t)blockIdx.x * BN;
  const int wm = (warp / (BN / WN)) * WM, wn = (warp % (BN / WN)) * WN;

  Acc acc[WM / 16][WN / 16];
#pragma unroll
  for (int i = 0; i < WM / 16; ++i)
#pragma unroll
    for (int j = 0; j < WN / 16; ++j) wmma::fill_fragment(acc[i][j], 0.f);

  for (int64_t k0 = 0; k0 < g.K; k0 += BK) {
    for (int e = tid; e < BM * BK; e += THREADS) {  // A tile, converted to bf16 on the way in
      const int r = e / BK, c = e % BK;
      const int64_t gm = m0 + r, gk = k0 + c;
      As[r * LDA + c] = (gm < g.M && gk < g.K) ? to_bf16<TA>(A[gm * g.sam + gk * g.sak]) : __float2bfloat16_rn(0.f);
    }
    for (int e = tid; e < BK * BN; e += THREADS) {
      const int r = e / BN, c = e % BN;
      const int64_t gk = k0 + r, gn = n0 + c;
      Bs[r * LDB + c] = (gk < g.K && gn < g.N) ? B[gk * g.sbk + gn * g.sbn] : __float2bfloat16_rn(0.f);
    }
    __syncthreads();
    mma_step<LDA, LDB>(acc, As, Bs, wm, wn);
    __syncthreads();
  }
  epilogue<TC>(g, acc, stage[warp], m0, n0, wm, wn, lane);
}
#else
template <typename TA, typename TC>
__global__ void __launch_bounds__(THREADS, 1) gemm_tiled(GemmArgs) { __trap(); }
template <typename TA, typename TC>
__global__ void __launch_bounds__(THREADS, 1) gemm_any(GemmArgs) { __trap(); }
#endif

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// gemm_tiled's layout: row-major A and B, rows and K in whole 16-byte chunks, aligned pointers
bool tiled_layout(const GemmArgs& g, int a_bytes) {
  const int64_t a_chunk = 16 / a_bytes;
  return g.sak == 1 && g.sam % a_chunk == 0 && g.K % a_chunk == 0 && aligned16(g.a) && g.sbn == 1 &&
         g.sbk % 8 == 0 && g.N % 8 == 0 && aligned16(g.b);
}

template <typename TA, typename TC>
void launch(const GemmArgs& g, dim3 grid, cudaStream_t s) {
  if (tiled_layout(g, sizeof(TA))) gemm_tiled<TA, TC><<<grid, THREADS, 0, s>>>(g);
  else gemm_any<TA, TC><<<grid, THREADS, 0, s>>>(g);
}

template <typename TA>
void launch(const GemmArgs& g, cudaStream_t s) {
  const dim3 grid((unsigned)((g.N + BN - 1) / BN), (unsigned)((g.M + BM - 1) / BM));
  if (grid.y > 65535) throw std::invalid_argument("gemm_cuda: too many rows for one launch");
  if (g.c_type == 1) launch<TA, float>(g, grid, s);
  else if (g.c_type == 2) launch<TA, bf16>(g, grid, s);
  else throw std::invalid_argument("gemm_cuda: the output must be float32 or bfloat16");
}

}  // namespace

void gemm_cuda(const GemmArgs& g, void* stream) {
  if (g.M <= 0 || g.N <= 0) return;
  int dev = 0, major = 0;
  if (cudaGetDevice(&dev) == cudaSuccess &&
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess && major < 8)
    throw std::runtime_error("gemm_cuda: needs a GPU of compute capability 8.0 or newer (bf16 tensor cores)");
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (g.a_type == 0) launch<uint8_t>(g, s);
  else if (g.a_type == 2) launch<bf16>(g, s);
  else throw std::invalid_argument("gemm_cuda: A must be uint8 or bfloat16");
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string("gemm_cuda: ") + cudaGetErrorString(err));
}

}  // namespace glyph_rt
