#include "raster.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace glyph_rt {

static inline uint8_t blend(uint8_t dst, uint8_t src, uint32_t a) {
  return (uint8_t)((dst * (255u - a) + src * a + 127u) / 255u);
}

void raster_pages_cpu(uint8_t* out, int32_t n_pages, int32_t H, int32_t W, int32_t page0,
                      const uint8_t bg[3], const Rects& rects, const Placements& pl,
                      const GlyphBitmaps& atlas, const uint8_t* palette, int32_t n_palette,
                      double sx, double sy) {
  const int64_t page_bytes = (int64_t)H * W * 3;
  if (bg[0] == bg[1] && bg[1] == bg[2]) {
    std::memset(out, bg[0], (size_t)(page_bytes * n_pages));
  } else {
    for (int64_t i = 0; i < (int64_t)H * W * n_pages; ++i) {
      out[3 * i] = bg[0]; out[3 * i + 1] = bg[1]; out[3 * i + 2] = bg[2];
    }
  }
  for (int64_t r = 0; r < rects.n; ++r) {
    int32_t pg = rects.page[r] - page0;
    if (pg < 0 || pg >= n_pages) continue;
    const int32_t* b = rects.box + 4 * r;
    int32_t x0 = std::max(0, b[0]), y0 = std::max(0, b[1]);
    int32_t x1 = std::min(W, b[2]), y1 = std::min(H, b[3]);
    const uint8_t* c = rects.rgb + 3 * r;
    for (int32_t y = y0; y < y1; ++y) {
      uint8_t* row = out + pg * page_bytes + ((int64_t)y * W) * 3;
      for (int32_t x = x0; x < x1; ++x) {
        row[3 * x] = c[0]; row[3 * x + 1] = c[1]; row[3 * x + 2] = c[2];
      }
    }
  }
  const int32_t P = atlas.phases;
  for (int64_t i = 0; i < pl.n; ++i) {
    int32_t pg = pl.page[i] - page0;
    if (pg < 0 || pg >= n_pages) continue;
    int32_t s = pl.slot[i];
    if (s < 0 || s >= atlas.slots) continue;
    double xf = pl.x[i] * sx;
    double ix = std::floor(xf);
    int32_t phase = std::min(P - 1, (int32_t)((xf - ix) * P));
    int64_t g = (int64_t)s * P + phase;
    int32_t gw = atlas.width[g], gh = atlas.height[g];
    if (gw <= 0 || gh <= 0) continue;
    int32_t x0 = (int32_t)ix + atlas.left[g];
    int32_t y0 = (int32_t)std::floor(pl.y[i] * sy + 0.5) - atlas.top[g];
    int32_t cx0 = std::max(0, -x0), cy0 = std::max(0, -y0);
    int32_t cx1 = std::min(gw, W - x0), cy1 = std::min(gh, H - y0);
    if (cx0 >= cx1 || cy0 >= cy1) continue;
    int32_t ci = pl.color[i] < n_palette ? pl.color[i] : 0;
    const uint8_t* col = palette + 3 * ci;
    const uint8_t* bm = atlas.data + atlas.offset[g];
    uint8_t* base = out + pg * page_bytes;
    for (int32_t yy = cy0; yy < cy1; ++yy) {
      const uint8_t* src = bm + (int64_t)yy * gw;
      uint8_t* dst = base + ((int64_t)(y0 + yy) * W + x0) * 3;
      for (int32_t xx = cx0; xx < cx1; ++xx) {
        uint32_t a = src[xx];
        if (!a) continue;
        uint8_t* d = dst + 3 * xx;
        if (a == 255) {
          d[0] = col[0]; d[1] = col[1]; d[2] = col[2];
        } else {
          d[0] = blend(d[0], col[0], a); d[1] = blend(d[1], col[1], a); d[2] = blend(d[2], col[2], a);
        }
      }
    }
  }
}

static inline int32_t luma(const uint8_t* p) {  // Pillow's "L" conversion
  return (int32_t)((p[0] * 19595u + p[1] * 38470u + p[2] * 7471u + 0x8000u) >> 16);
}

void ink_extent_cpu(const uint8_t* pages, int32_t n_pages, int32_t H, int32_t W, int32_t tol,
                    int32_t* right, int32_t* bottom) {
  for (int32_t p = 0; p < n_pages; ++p) {
    const uint8_t* img = pages + (int64_t)p * H * W * 3;
    int32_t v[4] = {luma(img), luma(img + 3), luma(img + 3 * W), luma(img + 3 * W + 3)};
    if (H < 2 || W < 2) v[1] = v[2] = v[3] = v[0];
    std::sort(v, v + 4);
    double bgv = 0.5 * (v[1] + v[2]);
    int32_t r = 0, b = 0;
    for (int32_t y = 0; y < H; ++y) {
      const uint8_t* row = img + (int64_t)y * W * 3;
      int32_t last = -1;
      for (int32_t x = W - 1; x >= 0; --x) {
        if (std::fabs(luma(row + 3 * x) - bgv) > tol) { last = x; break; }
      }
      if (last >= 0) {
        r = std::max(r, last + 1);
        b = y + 1;
      }
    }
    right[p] = r;
    bottom[p] = b;
  }
}

}  // namespace glyph_rt
