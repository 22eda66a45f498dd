// Pages -> GLM-4.1V / Qwen2.5-VL pixel_values on the CPU: each page's uint8 levels go through the
// [3, 256] normalization table straight into its patch rows (merge-block order, columns
// (channel, t, py, px), the frame repeated over t), with no float page in between; or, for the fused
// uint8 patch embedding, the levels themselves (one frame, rows padded to 592 bytes).
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <tmmintrin.h>
#endif

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

// One patch row of uint8 levels: 14 rows of 14 RGB pixels -> three 196-byte planes and 4 zero bytes.
void patch_u8_scalar(const uint8_t* src, int64_t stride, uint8_t* out) {
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

#if defined(__x86_64__) || defined(__i386__)
#define GLYPH_RT_SSSE3 1
// The same with byte shuffles: a pixel row (42 bytes) is read as three 16-byte loads at 0, 16 and 26 (the
// last ends at byte 42: nothing past the row is read) and each channel's 14 bytes gathered by pshufb.
struct Shuffles {
  __m128i a[3], b[3], c[3];
};

__attribute__((target("ssse3"))) Shuffles make_shuffles() {
  alignas(16) int8_t m[3][3][16];
  for (int ch = 0; ch < 3; ++ch) {
    for (int px = 0; px < 16; ++px) {
      const int at = 3 * px + ch;
      m[0][ch][px] = (px < kP && at < 16) ? at : -1;
      m[1][ch][px] = (px < kP && at >= 16 && at < 32) ? at - 16 : -1;
      m[2][ch][px] = (px < kP && at >= 32) ? at - 26 : -1;
    }
  }
  Shuffles s;
  for (int ch = 0; ch < 3; ++ch) {
    s.a[ch] = _mm_load_si128(reinterpret_cast<const __m128i*>(m[0][ch]));
    s.b[ch] = _mm_load_si128(reinterpret_cast<const __m128i*>(m[1][ch]));
    s.c[ch] = _mm_load_si128(reinterpret_cast<const __m128i*>(m[2][ch]));
  }
  return s;
}

__attribute__((target("ssse3"))) void patch_u8_ssse3(const uint8_t* src, int64_t stride, const Shuffles& m,
                                                     uint8_t* out) {
  alignas(16) uint8_t plane[3][kPP + 2];  // each 16-byte store runs 2 bytes into the next pixel row's place
  for (int py = 0; py < kP; ++py) {
    const uint8_t* s = src + py * stride;
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 16));
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 26));
    for (int ch = 0; ch < 3; ++ch) {
      const __m128i v = _mm_or_si128(_mm_or_si128(_mm_shuffle_epi8(a, m.a[ch]), _mm_shuffle_epi8(b, m.b[ch])),
                                     _mm_shuffle_epi8(c, m.c[ch]));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(plane[ch] + py * kP), v);
    }
  }
  for (int ch = 0; ch < 3; ++ch) std::memcpy(out + ch * kPP, plane[ch], kPP);
  std::memset(out + kRowU8, 0, kRowU8Stride - kRowU8);
}
#endif

void write_page_u8(const uint8_t* page, int64_t stride, int32_t h, int32_t w, uint8_t* out) {
  const int gh = h / kP, gw = w / kP;
#ifdef GLYPH_RT_SSSE3
  const bool simd = __builtin_cpu_supports("ssse3");
  const Shuffles m = simd ? make_shuffles() : Shuffles{};
#endif
  for (int by = 0; by < gh / 2; ++by) {
    for (int bx = 0; bx < gw / 2; ++bx) {
      for (int k = 0; k < 4; ++k, out += kRowU8Stride) {
        const uint8_t* src = page + (int64_t)((2 * by + k / 2) * kP) * stride + (int64_t)((2 * bx + k % 2) * kP) * 3;
#ifdef GLYPH_RT_SSSE3
        if (simd) {
          patch_u8_ssse3(src, stride, m, out);
          continue;
        }
#endif
        patch_u8_scalar(src, stride, out);
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
