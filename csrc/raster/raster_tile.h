// The per-pixel work of the tile rasterizer, shared by the CUDA kernel (raster_cuda.cu) and its
// host emulation (raster_tile_host.cpp), which runs the same code on the CPU so tests without a
// GPU still check the CUDA kernel's compositing and output indexing against the CPU rasterizer.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define GLYPH_HD __host__ __device__ __forceinline__
#else
#define GLYPH_HD inline
#endif

namespace glyph_rt {

constexpr int kTileH = 14, kTileW = 28;  // one patch row of a 2x2 merge block
constexpr int kPatch = 14, kRow = 1176;  // pixel_values: 3 channels x 2 frames x 14 x 14
constexpr int kRowU8 = 588;              // uint8 patches: 3 channels x 14 x 14,
constexpr int kRowU8Stride = 592;        // in rows padded to 16 bytes (4 zero bytes) for aligned GEMM loads

struct RasterTileArgs {
  void* out = nullptr;          // uint8 pages, or float / bf16 pixel_values
  int32_t* ink = nullptr;       // [P, 2] right, bottom (atomic max)
  float* bgv = nullptr;         // [P] background luma
  const void* lut = nullptr;    // [3, 256] model input value of each channel level, in the output type
  const int32_t* meta = nullptr;     // [P, 8] see PAGE_FIELDS in glyph_rt/ops/raster.py
  const int64_t* out_off = nullptr;  // [P] element offset (pages) or first row (pixel_values)
  const int32_t* glyph_start = nullptr;  // [tiles + 1]
  const int32_t* glyph_items = nullptr;
  const int32_t* g_x0 = nullptr;
  const int32_t* g_y0 = nullptr;
  const int32_t* g_w = nullptr;
  const int32_t* g_h = nullptr;
  const int32_t* g_off = nullptr;
  const int32_t* g_rgb = nullptr;
  const int32_t* rect_start = nullptr;  // [tiles + 1]
  const int32_t* rect_items = nullptr;
  const int32_t* r_box = nullptr;  // [R, 4]
  const int32_t* r_rgb = nullptr;
  const uint8_t* atlas = nullptr;
  int32_t num_pages = 0;
  int32_t tiles_per_page = 0;  // grid x: the largest page's tile count (1 for the background mode)
  int32_t mode = 0;            // 0 background, 1 ink, 2 pages, 3 pixel_values, 4 uint8 patches
  int32_t out_type = 0;        // 0 uint8, 1 float32, 2 bfloat16
  bool ink_too = false;        // pages mode: also reduce the ink extent
  bool gray = false;           // every color is grey: blend one channel
  float tol = 5.f;
};

GLYPH_HD int div255(int v) {  // floor(v / 255), as poppler and the CPU rasterizer blend
  return v / 255;
}

GLYPH_HD int luma(int r, int g, int b) {  // Pillow's "L"
  return (r * 19595 + g * 38470 + b * 7471 + 32768) >> 16;
}

// The color of pixel (row, col) of tile t: background, the rectangles binned to the tile, then
// its glyphs blended in placement order. Returns it packed as r | g << 8 | b << 16.
template <bool GRAY>
GLYPH_HD int composite_pixel(const RasterTileArgs& a, int bg, int t, int row, int col) {
  int r = bg & 255, g = (bg >> 8) & 255, b = (bg >> 16) & 255;
  for (int j = a.rect_start[t], e = a.rect_start[t + 1]; j < e; ++j) {
    const int k = a.rect_items[j];
    const int32_t* box = a.r_box + 4 * k;
    if (col >= box[0] && col < box[2] && row >= box[1] && row < box[3]) {
      const int c = a.r_rgb[k];
      r = c & 255, g = (c >> 8) & 255, b = (c >> 16) & 255;
    }
  }
  for (int j = a.glyph_start[t], e = a.glyph_start[t + 1]; j < e; ++j) {
    const int k = a.glyph_items[j];
    const int gx = col - a.g_x0[k], gy = row - a.g_y0[k];
    const int w = a.g_w[k];
    if (gx < 0 || gx >= w || gy < 0 || gy >= a.g_h[k]) continue;
    const int al = a.atlas[a.g_off[k] + gy * w + gx];
    const int na = 255 - al, c = a.g_rgb[k];
    r = div255(r * na + (c & 255) * al);
    if (!GRAY) {
      g = div255(g * na + ((c >> 8) & 255) * al);
      b = div255(b * na + ((c >> 16) & 255) * al);
    }
  }
  if (GRAY) g = b = r;
  return r | (g << 8) | (b << 16);
}

// Element index of pixel (ly, lx) of tile (ty, tx), channel 0 (and frame 0), in rows of `width`
// values: rows in merge-block order (block row, block column, my, mx), columns (channel, [t,] py, px).
GLYPH_HD int64_t patch_row_index(int64_t first_row, int out_w, int ty, int tx, int ly, int lx, int width) {
  const int by = ty / 2, my = ty % 2, mx = lx / kPatch, px = lx % kPatch;
  const int64_t row = first_row + (int64_t)(by * (out_w / (2 * kPatch)) + tx) * 4 + my * 2 + mx;
  return row * width + ly * kPatch + px;
}

// Writes one pixel's six pixel_values entries (3 channels x 2 identical frames) from the table.
template <typename OutT>
GLYPH_HD void store_pixel_values(OutT* out, const OutT* lut, int64_t i, int rgb) {
  const OutT vr = lut[rgb & 255], vg = lut[256 + ((rgb >> 8) & 255)], vb = lut[512 + ((rgb >> 16) & 255)];
  out[i] = vr, out[i + 196] = vr, out[i + 392] = vg, out[i + 588] = vg, out[i + 784] = vb, out[i + 980] = vb;
}

// Writes one pixel's three uint8 patch entries (channels of one frame, raw levels) at index i of
// rows of kRowU8Stride bytes; the pixels (ly 0, px 0-3) also zero the row's 4 pad bytes.
GLYPH_HD void store_patch_u8(uint8_t* out, int64_t i, int rgb, int ly, int lx) {
  out[i] = (uint8_t)(rgb & 255), out[i + 196] = (uint8_t)((rgb >> 8) & 255), out[i + 392] = (uint8_t)(rgb >> 16);
  if (ly == 0 && lx % kPatch < kRowU8Stride - kRowU8) out[i + kRowU8] = 0;
}

// Runs every mode of the CUDA kernel on the host, one pixel at a time (tests and debugging).
void raster_tiles_host(const RasterTileArgs& a);

}  // namespace glyph_rt
