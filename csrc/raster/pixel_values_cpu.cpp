// Pages -> GLM-4.1V / Qwen2.5-VL pixel_values on the CPU: each page's uint8 levels go through the
// [3, 256] normalization table straight into its patch rows (merge-block order, columns
// (channel, t, py, px), the frame repeated over t), with no float page in between; or, for the fused
// uint8 patch embedding, the levels themselves (one frame, rows padded to 592 bytes).
#include <cstring>

#include "raster.h"

namespace glyph_rt {
namespace {

constexpr int kP = 14, kPP = kP * kP, kRowPV = 3 * 2 * kPP, kRowU8 = 3 * kPP, kRowU8Stride = 592;

template <typename T>
void write_page(const uint8_t* page, int64_t stride, int32_t h, int32_t w, const T* lut, T* out) {
  const int gh = h / kP, gw = w / kP;
  for (int by = 0; by < gh / 2; ++by) {
    for (int bx = 0; bx < gw / 2; ++bx) {
      for (int m = 0; m < 4; ++m, out += kRowPV) {
        const uint8_t* src = page + (int64_t)((2 * by + m / 2) * kP) * stride + (int64_t)((2 * bx + m % 2) * kP) * 3;
        for (int c = 0; c < 3; ++c) {
          const T* l = lut + 256 * c;
          T* f = out + c * 2 * kPP;
          for (int py = 0; py < kP; ++py) {
            const uint8_t* s = src + py * stride + c;
            T* o = f + py * kP;
            for (int px = 0; px < kP; ++px) o[px] = l[s[3 * px]];
          }
          std::memcpy(f + kPP, f, kPP * sizeof(T));  // a still image is the same frame twice
        }
      }
    }
  }
}

template <typename T>
void write_pages(const uint8_t* pages, int32_t n_pages, int32_t H, int32_t W, const int32_t* hw,
                 const int64_t* first_row, const T* lut, T* out) {
  for (int32_t i = 0; i < n_pages; ++i) {
    if (hw[2 * i] <= 0 || hw[2 * i + 1] <= 0) continue;
    write_page(pages + (int64_t)i * H * W * 3, (int64_t)W * 3, hw[2 * i], hw[2 * i + 1], lut,
               out + first_row[i] * kRowPV);
  }
}

void write_page_u8(const uint8_t* page, int64_t stride, int32_t h, int32_t w, uint8_t* out) {
  const int gh = h / kP, gw = w / kP;
  for (int by = 0; by < gh / 2; ++by) {
    for (int bx = 0; bx < gw / 2; ++bx) {
      for (int m = 0; m < 4; ++m, out += kRowU8Stride) {
        const uint8_t* src = page + (int64_t)((2 * by + m / 2) * kP) * stride + (int64_t)((2 * bx + m % 2) * kP) * 3;
        for (int py = 0; py < kP; ++py) {
          const uint8_t* s = src + py * stride;
          uint8_t* o = out + py * kP;
          for (int px = 0; px < kP; ++px) {
            o[px] = s[3 * px];
            o[kPP + px] = s[3 * px + 1];
            o[2 * kPP + px] = s[3 * px + 2];
          }
        }
        std::memset(out + kRowU8, 0, kRowU8Stride - kRowU8);
      }
    }
  }
}

}  // namespace

void patches_u8_cpu(const uint8_t* pages, int32_t n_pages, int32_t H, int32_t W, const int32_t* hw,
                    const int64_t* first_row, uint8_t* out) {
  for (int32_t i = 0; i < n_pages; ++i) {
    if (hw[2 * i] <= 0 || hw[2 * i + 1] <= 0) continue;
    write_page_u8(pages + (int64_t)i * H * W * 3, (int64_t)W * 3, hw[2 * i], hw[2 * i + 1],
                  out + first_row[i] * kRowU8Stride);
  }
}

void pixel_values_cpu(const uint8_t* pages, int32_t n_pages, int32_t H, int32_t W, const int32_t* hw,
                      const int64_t* first_row, const float* lut, float* out) {
  write_pages(pages, n_pages, H, W, hw, first_row, lut, out);
}

void pixel_values_cpu(const uint8_t* pages, int32_t n_pages, int32_t H, int32_t W, const int32_t* hw,
                      const int64_t* first_row, const uint16_t* lut, uint16_t* out) {
  write_pages(pages, n_pages, H, W, hw, first_row, lut, out);
}

}  // namespace glyph_rt
