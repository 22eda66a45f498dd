// CUDA rasterizer: the GPU twin of raster_pages_cpu over binned tiles (see glyph_rt/ops/raster.py).
// Plain C++ declarations only, so bindings.cpp compiles without CUDA headers.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace glyph_rt {

struct RasterCudaArgs {
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
  int32_t mode = 0;            // 0 background, 1 ink, 2 pages, 3 pixel_values
  int32_t out_type = 0;        // 0 uint8, 1 float32, 2 bfloat16
  bool ink_too = false;        // pages mode: also reduce the ink extent
  bool gray = false;           // every color is grey: blend one channel
  float tol = 5.f;
};

// Launches on `stream` (a cudaStream_t); throws std::runtime_error on a launch error.
void raster_cuda(const RasterCudaArgs& args, void* stream);

// Names of the visible CUDA devices; empty without a driver or a GPU.
std::vector<std::string> cuda_device_names();

}  // namespace glyph_rt
