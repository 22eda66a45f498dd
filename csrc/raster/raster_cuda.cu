// CUDA rasterizer over binned tiles. One thread block draws one 14x28-pixel tile (one patch
// row of a 2x2 merge block), one thread per pixel: background, the rectangles binned to the
// tile, then the glyphs binned to the tile in placement order, with the CPU rasterizer's
// integer blend (raster_tile.h), so pages are identical to raster_pages_cpu. The mode decides
// the output.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "raster_cuda.h"

namespace glyph_rt {
namespace {

constexpr int kMaxGridY = 65535;

template <int MODE, bool GRAY, typename OutT>
__global__ void __launch_bounds__(kTileH * kTileW) raster_kernel(RasterTileArgs a, int32_t page0) {
  const int page = blockIdx.y + page0;
  const int32_t* m = a.meta + 8 * page;
  const int H = m[0], W = m[1], ntx = m[2], nty = m[3], tile_base = m[4], bg = m[5];
  const int tile = blockIdx.x;
  if (tile >= ntx * nty) return;
  const int ty = tile / ntx, tx = tile % ntx;
  const int lx = threadIdx.x, ly = threadIdx.y;
  const int row = ty * kTileH + ly, col = tx * kTileW + lx;
  const bool inside = row < H && col < W;
  const int rgb = composite_pixel<GRAY>(a, bg, tile_base + tile, row, col);
  const int r = rgb & 255, g = (rgb >> 8) & 255, b = (rgb >> 16) & 255;

  if constexpr (MODE == 0) {  // median luma of the top-left 2x2 pixels (the first pixel on tiny pages)
    __shared__ int corner[4];
    if (ly < 2 && lx < 2) corner[2 * ly + lx] = inside ? luma(r, g, b) : -1;
    __syncthreads();
    if (lx == 0 && ly == 0) {
      int v[4] = {corner[0], corner[1], corner[2], corner[3]};
      float med = (float)v[0];
      if (v[1] >= 0 && v[2] >= 0 && v[3] >= 0) {
        for (int i = 1; i < 4; ++i)  // sort four values
          for (int q = i; q > 0 && v[q - 1] > v[q]; --q) { int s = v[q]; v[q] = v[q - 1]; v[q - 1] = s; }
        med = 0.5f * (float)(v[1] + v[2]);
      }
      a.bgv[page] = med;
    }
    return;
  }
  if (MODE == 1 || (MODE == 2 && a.ink_too)) {
    __shared__ int right, bottom;
    if (lx == 0 && ly == 0) right = bottom = 0;
    __syncthreads();
    const float d = (float)luma(r, g, b) - a.bgv[page];
    if (inside && (d > a.tol || d < -a.tol)) {
      atomicMax(&right, col + 1);
      atomicMax(&bottom, row + 1);
    }
    __syncthreads();
    if (lx == 0 && ly == 0 && right > 0) {
      atomicMax(a.ink + 2 * page, right);
      atomicMax(a.ink + 2 * page + 1, bottom);
    }
  }
  if (MODE == 2 && inside) {
    uint8_t* o = static_cast<uint8_t*>(a.out) + a.out_off[page] + ((int64_t)row * W + col) * 3;
    o[0] = (uint8_t)r, o[1] = (uint8_t)g, o[2] = (uint8_t)b;
  }
  if constexpr (MODE == 3 || MODE == 4) {
    const int out_h = m[6], out_w = m[7];
    if (ty * kTileH >= out_h || tx * kTileW >= out_w) return;
    if constexpr (MODE == 3)
      store_pixel_values(static_cast<OutT*>(a.out), static_cast<const OutT*>(a.lut),
                         patch_row_index(a.out_off[page], out_w, ty, tx, ly, lx, kRow), rgb);
    else
      store_patch_u8(static_cast<uint8_t*>(a.out),
                     patch_row_index(a.out_off[page], out_w, ty, tx, ly, lx, kRowU8Stride), rgb, ly, lx);
  }
}

template <int MODE, bool GRAY, typename OutT>
void launch(const RasterTileArgs& a, cudaStream_t stream) {
  const dim3 block(kTileW, kTileH);
  for (int p0 = 0; p0 < a.num_pages; p0 += kMaxGridY) {
    const dim3 grid(a.tiles_per_page, std::min(kMaxGridY, a.num_pages - p0));
    raster_kernel<MODE, GRAY, OutT><<<grid, block, 0, stream>>>(a, p0);
  }
}

template <bool GRAY>
void dispatch(const RasterTileArgs& a, cudaStream_t s) {
  switch (a.mode) {
    case 0: launch<0, GRAY, uint8_t>(a, s); break;
    case 1: launch<1, GRAY, uint8_t>(a, s); break;
    case 2: launch<2, GRAY, uint8_t>(a, s); break;
    case 3:
      if (a.out_type == 1) launch<3, GRAY, float>(a, s);
      else if (a.out_type == 2) launch<3, GRAY, __nv_bfloat16>(a, s);
      else throw std::invalid_argument("raster_cuda: pixel_values must be float32 or bfloat16");
      break;
    case 4: launch<4, GRAY, uint8_t>(a, s); break;
    default: throw std::invalid_argument("raster_cuda: unknown mode " + std::to_string(a.mode));
  }
}

}  // namespace

void raster_cuda(const RasterTileArgs& a, void* stream) {
  if (a.num_pages <= 0 || a.tiles_per_page <= 0) return;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (a.gray) dispatch<true>(a, s);
  else dispatch<false>(a, s);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string("raster_cuda: ") + cudaGetErrorString(err));
}

std::vector<std::string> cuda_device_names() {
  std::vector<std::string> names;
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {  // no device: none; any other failure (a driver older than this runtime) says why
    cudaGetLastError();
    if (e == cudaErrorNoDevice) return names;
    throw std::runtime_error(std::string("the CUDA runtime reports: ") + cudaGetErrorString(e));
  }
  for (int i = 0; i < n; ++i) {
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, i) == cudaSuccess) names.emplace_back(prop.name);
  }
  return names;
}

}  // namespace glyph_rt
