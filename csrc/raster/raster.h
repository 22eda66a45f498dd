// CPU rasterizer: composites atlas glyph coverage into uint8 RGB pages.
#pragma once
#include <cstdint>

namespace glyph_rt {

struct GlyphBitmaps {
  const uint8_t* data = nullptr;    // all coverage bitmaps, row-major, concatenated
  const int64_t* offset = nullptr;  // [slots * phases] start of each bitmap in data
  const int32_t* width = nullptr;   // [slots * phases]
  const int32_t* height = nullptr;
  const int32_t* left = nullptr;    // bitmap origin relative to the pen position (px)
  const int32_t* top = nullptr;     // rows above the baseline
  int32_t phases = 4;               // sub-pixel horizontal phases per glyph
  int32_t slots = 0;
};

struct Placements {
  int64_t n = 0;
  const int32_t* page = nullptr;
  const float* x = nullptr;  // pen x, points
  const float* y = nullptr;  // baseline y, points
  const int32_t* slot = nullptr;
  const uint8_t* color = nullptr;  // palette index
  const int32_t* clip = nullptr;   // per glyph: the pixel row it stops at (exclusive), or null: none
};

struct Rects {  // filled rectangles in pixels, drawn before glyphs, in order
  int64_t n = 0;
  const int32_t* page = nullptr;
  const int32_t* box = nullptr;    // [n, 4] x0, y0, x1, y1 (exclusive)
  const uint8_t* rgb = nullptr;    // [n, 3]
};

// Renders pages [page0, page0 + n_pages) into out[n_pages, H, W, 3].
// sx, sy convert points to pixels (dpi/72, times the horizontal scale for sx).
// With `right` and `bottom` ([n_pages] each, or null) it also finds each page's auto-crop extent
// (as ink_extent_cpu, tolerance `tol`) right after drawing it, scanning only the drawn area.
void raster_pages_cpu(uint8_t* out, int32_t n_pages, int32_t H, int32_t W, int32_t page0,
                      const uint8_t bg[3], const Rects& rects, const Placements& pl,
                      const GlyphBitmaps& atlas, const uint8_t* palette, int32_t n_palette,
                      double sx, double sy, int32_t tol = 5, int32_t* right = nullptr,
                      int32_t* bottom = nullptr);

// Per page: the column after the rightmost and the row after the lowest pixel whose
// luma differs from the page's top-left 2x2 median by more than `tol` (Glyph's auto-crop).
// Never reads outside the pages, for any H, W >= 0 (blank or empty pages give 0, 0).
void ink_extent_cpu(const uint8_t* pages, int32_t n_pages, int32_t H, int32_t W, int32_t tol,
                    int32_t* right, int32_t* bottom);

// Each row of src[rows, W, 3] resized to out_w columns, written to the first out_w columns of dst[rows, dst_w, 3]:
// column x = (sum over t < taps of weights[x, t] * src column first[x] + t, plus half) >> precision_bits, clipped
// to 0..255 (Pillow's horizontal pass; taps past the row's end are skipped).
void resize_width_cpu(const uint8_t* src, int64_t rows, int32_t W, uint8_t* dst, int32_t dst_w, int32_t out_w,
                      const int64_t* first, const int32_t* weights, int32_t taps, int32_t precision_bits);

// pixel_values rows of the top-left hw[i] = (height, width) pixels of each page of pages[n_pages, H, W, 3]
// (sides multiples of 28; a page with a zero side is skipped), from row first_row[i] of out[N, 1176]:
// merge-block order, columns (channel, t, py, px), lut[3, 256] the value of each channel level.
// The uint16_t overload writes bfloat16 bits from a bfloat16 table.
void pixel_values_cpu(const uint8_t* pages, int32_t n_pages, int32_t H, int32_t W, const int32_t* hw,
                      const int64_t* first_row, const float* lut, float* out);
void pixel_values_cpu(const uint8_t* pages, int32_t n_pages, int32_t H, int32_t W, const int32_t* hw,
                      const int64_t* first_row, const uint16_t* lut, uint16_t* out);
// The same rows as uint8 levels for the fused patch embedding: one frame, columns (channel, py, px),
// each row padded to 592 bytes with zeros (out[N, 592]).
void patches_u8_cpu(const uint8_t* pages, int32_t n_pages, int32_t H, int32_t W, const int32_t* hw,
                    const int64_t* first_row, uint8_t* out);

}  // namespace glyph_rt
