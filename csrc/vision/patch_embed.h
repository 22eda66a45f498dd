// Patch-embedding GEMM on tensor cores (patch_embed.cu). Plain C++ declarations only, so
// bindings.cpp compiles without CUDA headers.
#pragma once
#include <cstdint>

namespace glyph_rt {

struct GemmArgs {
  const void* a = nullptr;     // [M, K]: uint8 (a_type 0) or bfloat16 (a_type 2)
  const void* b = nullptr;     // [K, N] bfloat16
  const void* bias = nullptr;  // [N] bfloat16, or null
  void* c = nullptr;           // [M, N]: float32 (c_type 1) or bfloat16 (c_type 2)
  int64_t M = 0, N = 0, K = 0;
  int64_t sam = 0, sak = 0, sbk = 0, sbn = 0, scm = 0, scn = 0;  // strides in elements
  int32_t a_type = 2, c_type = 2;
};

// Launches on `stream` (a cudaStream_t); throws std::runtime_error on a launch error.
void gemm_cuda(const GemmArgs& g, void* stream);

}  // namespace glyph_rt
