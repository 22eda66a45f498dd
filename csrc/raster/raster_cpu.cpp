#include "raster.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace glyph_rt {

// floor(v / 255): poppler's Splash blends coverage over its opaque page with a truncating division
// (pipeRunAARGB8: ((alpha2 - aSrc) * cDest + aSrc * cSrc) / alpha2, alpha2 = 255).
static inline uint8_t div255(uint32_t v) { return (uint8_t)(v / 255u); }

static inline uint8_t blend(uint8_t dst, uint8_t src, uint32_t a) {
  return div255(dst * (255u - a) + src * a);
}

namespace {

void fill_page(uint8_t* page, int64_t pixels, const uint8_t bg[3]) {
  if (bg[0] == bg[1] && bg[1] == bg[2]) {
    std::memset(page, bg[0], (size_t)(pixels * 3));
  } else {
    for (int64_t i = 0; i < pixels; ++i) {
      page[3 * i] = bg[0]; page[3 * i + 1] = bg[1]; page[3 * i + 2] = bg[2];
    }
  }
}

void fill_rect(uint8_t* page, int32_t H, int32_t W, const int32_t* b, const uint8_t* c) {
  int32_t x0 = std::max(0, b[0]), y0 = std::max(0, b[1]);
  int32_t x1 = std::min(W, b[2]), y1 = std::min(H, b[3]);
  for (int32_t y = y0; y < y1; ++y) {
    uint8_t* row = page + ((int64_t)y * W) * 3;
    for (int32_t x = x0; x < x1; ++x) {
      row[3 * x] = c[0]; row[3 * x + 1] = c[1]; row[3 * x + 2] = c[2];
    }
  }
}

}  // namespace

static inline int32_t luma(const uint8_t* p) {  // Pillow's "L" conversion
  return (int32_t)((p[0] * 19595u + p[1] * 38470u + p[2] * 7471u + 0x8000u) >> 16);
}

// Glyph's auto-crop extent of one page: the column after the rightmost and the row after the lowest
// pixel whose luma differs from the median of the top-left 2x2 pixels (fewer on a smaller page) by
// more than `tol`. Pixels at x >= xb or y >= yb are known to hold the background `bg_luma` (nothing
// was drawn there): they are skipped unless the background itself counts as ink. Reads only
// pixels inside the H x W page, for any H, W >= 0.
static void page_ink(const uint8_t* img, int32_t H, int32_t W, int32_t tol, int32_t bg_luma, int32_t xb,
                     int32_t yb, int32_t* right, int32_t* bottom) {
  *right = *bottom = 0;
  if (H <= 0 || W <= 0) return;
  const int32_t x1 = W > 1 ? 1 : 0, y1 = H > 1 ? 1 : 0;
  auto px = [&](int32_t x, int32_t y) { return img + ((int64_t)y * W + x) * 3; };
  int32_t v[4] = {luma(px(0, 0)), luma(px(x1, 0)), luma(px(0, y1)), luma(px(x1, y1))};
  std::sort(v, v + 4);
  const double bgv = 0.5 * (v[1] + v[2]);
  auto ink = [&](int32_t x, int32_t y) { return std::fabs(luma(px(x, y)) - bgv) > tol; };
  if (std::fabs(bg_luma - bgv) > tol) xb = W, yb = H;  // the untouched background is ink too
  xb = std::clamp(xb, 0, W);
  yb = std::clamp(yb, 0, H);
  int32_t r = 0, b = 0;
  // The rightmost ink column: each row is scanned from the right only down to the best
  // column found so far, so after the first line of text a row costs a few pixels.
  for (int32_t y = 0; y < yb; ++y)
    for (int32_t x = xb - 1; x >= r; --x)
      if (ink(x, y)) { r = x + 1; break; }
  // The lowest ink row: scan rows from the bottom, only up to the known right edge.
  for (int32_t y = yb - 1; y >= 0 && r && !b; --y)
    for (int32_t x = 0; x < r; ++x)
      if (ink(x, y)) { b = y + 1; break; }
  *right = r;
  *bottom = b;
}

void raster_pages_cpu(uint8_t* out, int32_t n_pages, int32_t H, int32_t W, int32_t page0,
                      const uint8_t bg[3], const Rects& rects, const Placements& pl,
                      const GlyphBitmaps& atlas, const uint8_t* palette, int32_t n_palette,
                      double sx, double sy, int32_t tol, int32_t* right, int32_t* bottom) {
  const int64_t page_bytes = (int64_t)H * W * 3;
  const int32_t P = atlas.phases;
  // Grey background, rectangles and palette keep every pixel grey: blend one channel only.
  bool gray = bg[0] == bg[1] && bg[1] == bg[2];
  for (int32_t c = 0; c < n_palette; ++c)
    gray = gray && palette[3 * c] == palette[3 * c + 1] && palette[3 * c + 1] == palette[3 * c + 2];
  for (int64_t r = 0; r < rects.n; ++r)
    gray = gray && rects.rgb[3 * r] == rects.rgb[3 * r + 1] && rects.rgb[3 * r + 1] == rects.rgb[3 * r + 2];
  // Grey blending through a table per palette colour: out = table[dst << 8 | coverage] (64 KiB, the
  // same integer arithmetic, precomputed).
  std::vector<uint8_t> table;
  if (gray) {
    table.resize((size_t)n_palette << 16);
    for (int32_t c = 0; c < n_palette; ++c) {
      const uint32_t col = palette[3 * c];
      uint8_t* t = table.data() + ((size_t)c << 16);
      for (uint32_t d = 0; d < 256; ++d)
        for (uint32_t a = 0; a < 256; ++a) t[d << 8 | a] = div255(d * (255u - a) + col * a);
    }
  }
  // Placements are grouped by page (the layout emits them in page order); each page is filled
  // and composited while it is still in cache.
  int64_t gi = 0;
  for (int32_t pg = 0; pg < n_pages; ++pg) {
    const int32_t page = page0 + pg;
    uint8_t* base = out + pg * page_bytes;
    fill_page(base, (int64_t)H * W, bg);
    int32_t xb = 0, yb = 0;  // everything drawn on this page lies in [0, xb) x [0, yb)
    for (int64_t r = 0; r < rects.n; ++r) {
      if (rects.page[r] != page) continue;
      const int32_t* b = rects.box + 4 * r;
      fill_rect(base, H, W, b, rects.rgb + 3 * r);
      if (std::max(0, b[0]) < std::min(W, b[2]) && std::max(0, b[1]) < std::min(H, b[3]))
        xb = std::max(xb, std::min(W, b[2])), yb = std::max(yb, std::min(H, b[3]));
    }
    while (gi < pl.n && pl.page[gi] < page) ++gi;
    for (; gi < pl.n && pl.page[gi] == page; ++gi) {
      int32_t s = pl.slot[gi];
      if (s < 0 || s >= atlas.slots) continue;
      double xf = pl.x[gi] * sx;
      double ix = std::floor(xf);
      int32_t phase = std::min(P - 1, (int32_t)((xf - ix) * P));
      int64_t g = (int64_t)s * P + phase;
      int32_t gw = atlas.width[g], gh = atlas.height[g];
      if (gw <= 0 || gh <= 0) continue;
      int32_t x0 = (int32_t)ix + atlas.left[g];
      int32_t y0 = (int32_t)std::floor(pl.y[gi] * sy + 0.5) - atlas.top[g];
      int32_t cx0 = std::max(0, -x0), cy0 = std::max(0, -y0);
      const int32_t ylim = pl.clip ? std::min(H, pl.clip[gi]) : H;
      int32_t cx1 = std::min(gw, W - x0), cy1 = std::min(gh, ylim - y0);
      if (cx0 >= cx1 || cy0 >= cy1) continue;
      int32_t ci = pl.color[gi] < n_palette ? pl.color[gi] : 0;
      const uint32_t c0 = palette[3 * ci], c1 = palette[3 * ci + 1], c2 = palette[3 * ci + 2];
      xb = std::max(xb, x0 + cx1);
      yb = std::max(yb, y0 + cy1);
      const uint8_t* bm = atlas.data + atlas.offset[g];
      for (int32_t yy = cy0; yy < cy1; ++yy) {
        const uint8_t* src = bm + (int64_t)yy * gw;
        uint8_t* dst = base + ((int64_t)(y0 + yy) * W + x0) * 3;
        if (gray) {  // grey page and grey text: one table look-up, replicated
          const uint8_t* t = table.data() + ((size_t)ci << 16);
          for (int32_t xx = cx0; xx < cx1; ++xx) {
            uint8_t* d = dst + 3 * xx;
            d[0] = d[1] = d[2] = t[(uint32_t)d[0] << 8 | src[xx]];
          }
        } else {  // branch-free: a = 0 leaves the pixel as it is
          for (int32_t xx = cx0; xx < cx1; ++xx) {
            const uint32_t a = src[xx], na = 255u - a;
            uint8_t* d = dst + 3 * xx;
            d[0] = div255(d[0] * na + c0 * a);
            d[1] = div255(d[1] * na + c1 * a);
            d[2] = div255(d[2] * na + c2 * a);
          }
        }
      }
    }
    // the page is still in cache: its crop extent now, scanning only where something was drawn
    if (right) page_ink(base, H, W, tol, luma(bg), xb, yb, right + pg, bottom + pg);
  }
}

void ink_extent_cpu(const uint8_t* pages, int32_t n_pages, int32_t H, int32_t W, int32_t tol,
                    int32_t* right, int32_t* bottom) {
  for (int32_t p = 0; p < n_pages; ++p)  // nothing known about the pages: every pixel may be ink
    page_ink(pages + (int64_t)p * H * W * 3, H, W, tol, 0, W, H, right + p, bottom + p);
}
}  // namespace glyph_rt
