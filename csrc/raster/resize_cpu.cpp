// Horizontal bicubic resize of uint8 RGB rows, as Pillow's ImagingResampleHorizontal_8bpc (see
// glyph_rt/render/resample.py for the taps, which come in precomputed).
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "raster.h"

namespace glyph_rt {

void resize_width_cpu(const uint8_t* src, int64_t rows, int32_t W, uint8_t* dst, int32_t dst_w, int32_t out_w,
                      const int64_t* first, const int32_t* weights, int32_t taps, int32_t precision_bits) {
  const int32_t half = 1 << (precision_bits - 1), top = 255 << precision_bits;
  // A column whose taps all read one colour v gives v itself when v times its taps' rounding error (their sum's
  // distance from 1 << precision_bits) stays under half: then page background (most of a page) is copied.
  int64_t err = 0;
  for (int32_t x = 0; x < out_w; ++x) {
    int64_t sum = 0;
    for (int32_t t = 0; t < taps; ++t) sum += weights[(int64_t)x * taps + t];
    err = std::max<int64_t>(err, std::llabs(sum - ((int64_t)1 << precision_bits)));
  }
  const bool copy_uniform = 255 * err < half;
  std::vector<int32_t> run_end(W);  // per column: the end of the run of pixels equal to it
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* s = src + r * (int64_t)W * 3;
    uint8_t* d = dst + r * (int64_t)dst_w * 3;
    if (copy_uniform && W) {
      run_end[W - 1] = W;
      for (int32_t x = W - 2; x >= 0; --x)
        run_end[x] = (s[3 * x] == s[3 * x + 3] && s[3 * x + 1] == s[3 * x + 4] && s[3 * x + 2] == s[3 * x + 5])
                         ? run_end[x + 1] : x + 1;
    }
    for (int32_t x = 0; x < out_w; ++x) {
      const int64_t f = first[x];
      const uint8_t* p = s + f * 3;
      const int32_t n = (int32_t)std::min<int64_t>(taps, W - f);
      if (copy_uniform && run_end[f] >= f + n) {
        d[3 * x] = p[0], d[3 * x + 1] = p[1], d[3 * x + 2] = p[2];
        continue;
      }
      const int32_t* k = weights + (int64_t)x * taps;
      int32_t a0 = half, a1 = half, a2 = half;  // int32 as Pillow's: the taps keep the sums in range
      for (int32_t t = 0; t < n; ++t) {
        a0 += p[3 * t] * k[t];
        a1 += p[3 * t + 1] * k[t];
        a2 += p[3 * t + 2] * k[t];
      }
      d[3 * x] = a0 <= 0 ? 0 : a0 >= top ? 255 : (uint8_t)(a0 >> precision_bits);
      d[3 * x + 1] = a1 <= 0 ? 0 : a1 >= top ? 255 : (uint8_t)(a1 >> precision_bits);
      d[3 * x + 2] = a2 <= 0 ? 0 : a2 >= top ? 255 : (uint8_t)(a2 >> precision_bits);
    }
  }
}

}  // namespace glyph_rt
