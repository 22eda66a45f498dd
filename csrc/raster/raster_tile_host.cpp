// The CUDA tile kernel's modes run on the host, pixel by pixel, through the same per-pixel code
// (raster_tile.h): how the CUDA path's compositing and output indexing are tested without a GPU.
#include <algorithm>

#include "raster_tile.h"

namespace glyph_rt {
namespace {

template <bool GRAY>
void run(const RasterTileArgs& a) {
  for (int page = 0; page < a.num_pages; ++page) {
    const int32_t* m = a.meta + 8 * page;
    const int H = m[0], W = m[1], ntx = m[2], nty = m[3], tile_base = m[4], bg = m[5];
    const int out_h = m[6], out_w = m[7];
    const int tiles = std::min(ntx * nty, a.mode == 0 ? 1 : a.tiles_per_page);
    for (int tile = 0; tile < tiles; ++tile) {
      const int ty = tile / ntx, tx = tile % ntx;
      if (a.mode >= 3 && (ty * kTileH >= out_h || tx * kTileW >= out_w)) continue;
      int corner[4] = {-1, -1, -1, -1}, right = 0, bottom = 0;
      for (int ly = 0; ly < kTileH; ++ly) {
        for (int lx = 0; lx < kTileW; ++lx) {
          const int row = ty * kTileH + ly, col = tx * kTileW + lx;
          const bool inside = row < H && col < W;
          const int rgb = composite_pixel<GRAY>(a, bg, tile_base + tile, row, col);
          const int r = rgb & 255, g = (rgb >> 8) & 255, b = (rgb >> 16) & 255;
          if (a.mode == 0 && ly < 2 && lx < 2 && inside) corner[2 * ly + lx] = luma(r, g, b);
          if (a.mode == 1 || (a.mode == 2 && a.ink_too)) {
            const float d = (float)luma(r, g, b) - a.bgv[page];
            if (inside && (d > a.tol || d < -a.tol)) {
              right = std::max(right, col + 1);
              bottom = std::max(bottom, row + 1);
            }
          }
          if (a.mode == 2 && inside) {
            uint8_t* o = static_cast<uint8_t*>(a.out) + a.out_off[page] + ((int64_t)row * W + col) * 3;
            o[0] = (uint8_t)r, o[1] = (uint8_t)g, o[2] = (uint8_t)b;
          }
          if (a.mode == 4)
            store_patch_u8(static_cast<uint8_t*>(a.out),
                           patch_row_index(a.out_off[page], out_w, ty, tx, ly, lx, kRowU8Stride), rgb, ly, lx);
          if (a.mode == 3) {
            const int64_t i = patch_row_index(a.out_off[page], out_w, ty, tx, ly, lx, kRow);
            if (a.out_type == 1)
              store_pixel_values(static_cast<float*>(a.out), static_cast<const float*>(a.lut), i, rgb);
            else  // bfloat16: the table holds the bits already
              store_pixel_values(static_cast<uint16_t*>(a.out), static_cast<const uint16_t*>(a.lut), i, rgb);
          }
        }
      }
      if (a.mode == 0) {
        int v[4] = {corner[0], corner[1], corner[2], corner[3]};
        float med = (float)v[0];
        if (v[1] >= 0 && v[2] >= 0 && v[3] >= 0) {
          std::sort(v, v + 4);
          med = 0.5f * (float)(v[1] + v[2]);
        }
        a.bgv[page] = med;
      }
      if (right > 0) {
        a.ink[2 * page] = std::max(a.ink[2 * page], right);
        a.ink[2 * page + 1] = std::max(a.ink[2 * page + 1], bottom);
      }
    }
  }
}

}  // namespace

void raster_tiles_host(const RasterTileArgs& a) {
  if (a.gray) run<true>(a);
  else run<false>(a);
}

}  // namespace glyph_rt
