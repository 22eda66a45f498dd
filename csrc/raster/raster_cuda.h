// CUDA rasterizer: the GPU twin of raster_pages_cpu over binned tiles (see glyph_rt/ops/raster.py).
// Plain C++ declarations only, so bindings.cpp compiles without CUDA headers.
#pragma once
#include <string>
#include <vector>

#include "raster_tile.h"

namespace glyph_rt {

// Launches on `stream` (a cudaStream_t); throws std::runtime_error on a launch error.
void raster_cuda(const RasterTileArgs& args, void* stream);

// Names of the visible CUDA devices; empty without a driver or a GPU.
std::vector<std::string> cuda_device_names();

}  // namespace glyph_rt
