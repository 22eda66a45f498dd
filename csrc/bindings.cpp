// The one place that binds the compiled extension glyph_rt._C.
// CPU entry points take numpy arrays (zero-copy views of torch tensors); the extension does
// not link against torch, so one build stays valid across torch versions.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <climits>
#include <cmath>
#include <string>
#include <vector>

#include "layout/layout.h"
#include "raster/raster.h"
#include "raster/raster_tile.h"
#ifdef GLYPH_RT_WITH_CUDA
#include "raster/raster_cuda.h"
#include "vision/patch_embed.h"
#endif

namespace py = pybind11;
using namespace glyph_rt;

namespace {

template <typename T>
using Arr = py::array_t<T, py::array::c_style | py::array::forcecast>;

template <typename T>
py::array_t<T> to_numpy(std::vector<T>&& v) {
  auto* heap = new std::vector<T>(std::move(v));
  py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>({(py::ssize_t)heap->size()}, heap->data(), owner);
}

template <typename T>
const T* ptr(const Arr<T>& a, py::ssize_t n, const char* name) {
  if (a.size() < n) throw std::invalid_argument(std::string(name) + ": array too short");
  return a.data();
}

py::dict run_layout(const Arr<uint32_t>& text, const Arr<int32_t>& lut, const Arr<double>& advance,
                    const Arr<uint8_t>& missing_flag, int32_t space_slot, int32_t missing_slot,
                    const py::dict& params, const Arr<int32_t>& marker, const py::object& width_1000) {
  Atlas a;
  a.lut = lut.data();
  a.lut_size = lut.size();
  a.advance = advance.data();
  a.missing_flag = missing_flag.data();
  a.space_slot = space_slot;
  a.missing_slot = missing_slot;
  a.n_slots = (int32_t)advance.size();
  if (advance.size() > INT32_MAX || missing_slot < 0 || missing_slot >= advance.size() ||
      space_slot >= advance.size() || missing_flag.size() != advance.size())
    throw std::invalid_argument("layout: atlas arrays are inconsistent (slots, advance, missing_flag)");
  LayoutParams p;
  auto f = [&](const char* k, double& v) { if (params.contains(k)) v = params[k].cast<double>(); };
  auto i = [&](const char* k, int32_t& v) { if (params.contains(k)) v = params[k].cast<int32_t>(); };
  f("frame_x", p.frame_x); f("frame_y", p.frame_y); f("frame_w", p.frame_w); f("frame_h", p.frame_h);
  f("left_indent", p.left_indent); f("right_indent", p.right_indent);
  f("first_line_indent", p.first_line_indent); f("leading", p.leading); f("ascent", p.ascent);
  f("space_before", p.space_before); f("space_after", p.space_after);
  f("space_shrink", p.space_shrink);
  i("align", p.align); i("wrap", p.wrap); i("lines_per_paragraph", p.lines_per_paragraph);
  i("newline_marker", p.newline_marker); i("tab_size", p.tab_size); i("max_pages", p.max_pages);
  f("font_size", p.font_size); f("pdf_scale", p.pdf_scale); i("pdf_phases", p.pdf_phases);
  f("pdf_frame_x", p.pdf_frame_x); f("pdf_left_indent", p.pdf_left_indent); f("pdf_font_size", p.pdf_font_size);
  f("pdf_avail_width", p.pdf_avail_width);
  auto bad = [](const std::string& what) { throw std::invalid_argument("layout: " + what); };
  Arr<double> w1000;
  if (!width_1000.is_none()) {
    w1000 = width_1000.cast<Arr<double>>();
    if (w1000.size() != advance.size()) bad("width_1000 must have one entry per atlas slot");
    for (py::ssize_t k = 0; k < w1000.size(); ++k)
      if (!(std::fabs(w1000.data()[k]) <= 1e9)) bad("width_1000 must be finite, within +-1e9");
    a.width_1000 = w1000.data();
  }
  for (double v : {p.font_size, p.pdf_scale, p.pdf_frame_x, p.pdf_left_indent, p.pdf_font_size, p.pdf_avail_width})
    if (!(std::fabs(v) <= 1e9)) bad("every pdf_* setting and font_size must be finite, within +-1e9");
  if (p.pdf_scale < 0 || p.pdf_phases < 1) bad("pdf_scale must be >= 0 and pdf_phases >= 1");
  for (double v : {p.frame_x, p.frame_y, p.frame_w, p.frame_h, p.left_indent, p.right_indent,
                   p.first_line_indent, p.leading, p.ascent, p.space_before, p.space_after, p.space_shrink})
    if (!std::isfinite(v)) bad("every length must be finite");
  if (p.leading <= 0) bad("leading must be > 0");
  if (p.frame_w <= 0 || p.frame_h <= 0) bad("frame_w and frame_h must be > 0");
  if (p.align < kLeft || p.align > kJustify) bad("align must be 0..3");
  if (p.tab_size < 1 || p.tab_size > 255) bad("tab_size must be in 1..255");
  if (p.lines_per_paragraph < 1) bad("lines_per_paragraph must be >= 1");
  if (p.max_pages < 1) bad("max_pages must be >= 1");
  if (text.size() > INT32_MAX) bad("text is longer than 2^31 - 1 characters");
  LayoutResult r;
  {
    py::gil_scoped_release nogil;
    layout(text.data(), text.size(), a, p, marker.data(), (int32_t)marker.size(), r);
  }
  py::dict d;
  d["g_page"] = to_numpy(std::move(r.g_page));
  d["g_slot"] = to_numpy(std::move(r.g_slot));
  d["g_src"] = to_numpy(std::move(r.g_src));
  d["g_x"] = to_numpy(std::move(r.g_x));
  d["g_y"] = to_numpy(std::move(r.g_y));
  d["g_color"] = to_numpy(std::move(r.g_color));
  d["l_page"] = to_numpy(std::move(r.l_page));
  d["l_x"] = to_numpy(std::move(r.l_x));
  d["l_y"] = to_numpy(std::move(r.l_y));
  d["l_width"] = to_numpy(std::move(r.l_width));
  d["l_src_start"] = to_numpy(std::move(r.l_src_start));
  d["l_src_end"] = to_numpy(std::move(r.l_src_end));
  d["b_page"] = to_numpy(std::move(r.b_page));
  d["b_x"] = to_numpy(std::move(r.b_x));
  d["b_y"] = to_numpy(std::move(r.b_y));
  d["b_w"] = to_numpy(std::move(r.b_w));
  d["b_h"] = to_numpy(std::move(r.b_h));
  d["p_src_start"] = to_numpy(std::move(r.p_src_start));
  d["p_src_end"] = to_numpy(std::move(r.p_src_end));
  d["p_line_start"] = to_numpy(std::move(r.p_line_start));
  d["missing"] = r.missing;
  d["stripped"] = r.stripped;
  d["placed"] = r.placed;
  d["marker_glyphs"] = r.marker_glyphs;
  d["pages"] = r.pages;
  d["truncated"] = r.truncated;
  return d;
}

void raster_cpu(const py::array& out_arg, int32_t page0, const Arr<uint8_t>& bg,
                const Arr<int32_t>& rect_page, const Arr<int32_t>& rect_box, const Arr<uint8_t>& rect_rgb,
                const Arr<int32_t>& g_page, const Arr<float>& g_x, const Arr<float>& g_y,
                const Arr<int32_t>& g_slot, const Arr<uint8_t>& g_color, const Arr<uint8_t>& data,
                const Arr<int64_t>& offset, const Arr<int32_t>& width, const Arr<int32_t>& height,
                const Arr<int32_t>& left, const Arr<int32_t>& top, int32_t phases,
                const Arr<uint8_t>& palette, double sx, double sy, int32_t tol, py::object ink,
                py::object g_clip) {
  using U8 = py::array_t<uint8_t, py::array::c_style>;
  using I32 = py::array_t<int32_t, py::array::c_style>;
  // the caller's own arrays, never a converted copy that would receive the pixels and be dropped
  if (!U8::check_(out_arg)) throw std::invalid_argument("raster: out must be a C-contiguous uint8 array");
  auto out = py::reinterpret_borrow<U8>(out_arg);
  if (out.ndim() != 4 || out.shape(3) != 3) throw std::invalid_argument("raster: out must be [P,H,W,3] uint8");
  if (!out.writeable()) throw std::invalid_argument("raster: out is read-only");
  int32_t P = (int32_t)out.shape(0), H = (int32_t)out.shape(1), W = (int32_t)out.shape(2);
  int64_t n = g_page.size();
  int64_t nr = rect_page.size();
  int64_t slots = phases > 0 ? width.size() / phases : 0;
  GlyphBitmaps a{data.data(), ptr(offset, slots * phases, "offset"), width.data(),
                 ptr(height, slots * phases, "height"), ptr(left, slots * phases, "left"),
                 ptr(top, slots * phases, "top"), phases, (int32_t)slots};
  Arr<int32_t> clip;
  if (!g_clip.is_none()) clip = g_clip.cast<Arr<int32_t>>();
  Placements pl{n, g_page.data(), ptr(g_x, n, "g_x"), ptr(g_y, n, "g_y"), ptr(g_slot, n, "g_slot"),
                ptr(g_color, n, "g_color"), g_clip.is_none() ? nullptr : ptr(clip, n, "g_clip")};
  Rects rc{nr, rect_page.data(), ptr(rect_box, nr * 4, "rect_box"), ptr(rect_rgb, nr * 3, "rect_rgb")};
  if (bg.size() < 3 || palette.size() < 3) throw std::invalid_argument("raster: bad colors");
  if (phases < 1 || width.size() % phases != 0)
    throw std::invalid_argument("raster: phases must be >= 1 and divide the number of bitmaps");
  if (!(std::isfinite(sx) && std::isfinite(sy) && sx > 0 && sy > 0))
    throw std::invalid_argument("raster: sx and sy must be finite and > 0");
  // Placements must be finite and within int32 pixel range once scaled; pages sorted as the loop expects.
  const double lim = 1e9;
  for (int64_t g = 0; g < n; ++g) {
    double x = pl.x[g] * sx, y = pl.y[g] * sy;
    if (!(std::fabs(x) < lim && std::fabs(y) < lim))
      throw std::invalid_argument("raster: glyph " + std::to_string(g) + " lies at a non-finite or huge position");
    if (g && pl.page[g] < pl.page[g - 1]) throw std::invalid_argument("raster: g_page must be sorted");
  }
  // Every bitmap must lie inside the atlas data: checked once here, not per glyph.
  for (int64_t g = 0; g < slots * phases; ++g) {
    if (a.width[g] < 0 || a.height[g] < 0 || a.offset[g] < 0 ||
        a.offset[g] + (int64_t)a.width[g] * a.height[g] > (int64_t)data.size())
      throw std::invalid_argument("raster: atlas bitmap out of range");
  }
  int32_t* right = nullptr;
  if (!ink.is_none()) {  // an int32 [P, 2] array receives (right, bottom) per page
    if (!I32::check_(ink)) throw std::invalid_argument("raster: ink must be a C-contiguous int32 [P, 2] array");
    auto arr = py::reinterpret_borrow<I32>(ink);
    if (arr.ndim() != 2 || arr.shape(0) != P || arr.shape(1) != 2 || !arr.writeable())
      throw std::invalid_argument("raster: ink must be a writable int32 [P, 2] array");
    right = arr.mutable_data();
  }
  std::vector<int32_t> rb(right ? 2 * (size_t)P : 0);
  uint8_t* o = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    raster_pages_cpu(o, P, H, W, page0, bg.data(), rc, pl, a, palette.data(), (int32_t)(palette.size() / 3), sx, sy,
                     tol, right ? rb.data() : nullptr, right ? rb.data() + P : nullptr);
  }
  for (int32_t p = 0; right && p < P; ++p) right[2 * p] = rb[p], right[2 * p + 1] = rb[P + p];
}

py::tuple ink_extent(const py::array_t<uint8_t, py::array::c_style>& pages, int32_t tol) {
  if (pages.ndim() != 4 || pages.shape(3) != 3) throw std::invalid_argument("ink_extent: need [P,H,W,3]");
  int32_t P = (int32_t)pages.shape(0);
  py::array_t<int32_t> right(P), bottom(P);
  const uint8_t* src = pages.data();
  int32_t* r = right.mutable_data();
  int32_t* b = bottom.mutable_data();
  {
    py::gil_scoped_release nogil;
    ink_extent_cpu(src, P, (int32_t)pages.shape(1), (int32_t)pages.shape(2), tol, r, b);
  }
  return py::make_tuple(right, bottom);
}

// src [rows, W, 3] -> the first out_w columns of dst [rows, dst_w, 3] (see raster.h); first [out_w],
// weights [out_w, taps] from glyph_rt.render.resample.bicubic_taps.
void resize_width(const py::array_t<uint8_t, py::array::c_style>& src, const py::array& dst_arg,
                  const Arr<int64_t>& first, const Arr<int32_t>& weights, int32_t precision_bits) {
  using U8 = py::array_t<uint8_t, py::array::c_style>;
  if (!U8::check_(dst_arg)) throw std::invalid_argument("resize_width: dst must be a C-contiguous uint8 array");
  auto dst = py::reinterpret_borrow<U8>(dst_arg);
  if (src.ndim() != 3 || src.shape(2) != 3 || dst.ndim() != 3 || dst.shape(2) != 3 || dst.shape(0) != src.shape(0))
    throw std::invalid_argument("resize_width: src and dst must be [rows, W, 3] uint8 with the same rows");
  if (weights.ndim() != 2 || first.ndim() != 1 || first.shape(0) != weights.shape(0))
    throw std::invalid_argument("resize_width: first must be [out_w] and weights [out_w, taps]");
  const int64_t out_w = first.shape(0), W = src.shape(1), taps = weights.shape(1);
  if (out_w > dst.shape(1)) throw std::invalid_argument("resize_width: dst has fewer columns than the taps");
  if (precision_bits < 1 || precision_bits > 22) throw std::invalid_argument("resize_width: precision_bits 1..22");
  const int64_t* f = first.data();
  for (int64_t x = 0; x < out_w; ++x)
    if (f[x] < 0 || (W && f[x] >= W) || (!W && out_w))
      throw std::invalid_argument("resize_width: a tap's first column is outside the source row");
  const uint8_t* s = src.data();
  uint8_t* d = dst.mutable_data();
  const int32_t* w = weights.data();
  const int64_t rows = src.shape(0);
  const int32_t dst_w = (int32_t)dst.shape(1);
  py::gil_scoped_release nogil;
  resize_width_cpu(s, rows, (int32_t)W, d, dst_w, (int32_t)out_w, f, w, (int32_t)taps, precision_bits);
}

// pixel_values rows of pages[P, H, W, 3] (see raster.h): hw [P, 2] (height, width; 0 skips a page),
// first_row [P], out [N, 1176] float32 with a float32 lut [3, 256], or uint16 (bfloat16 bits) with a
// bfloat16-bits lut, or uint8 patches [N, 592] with no lut. Every page's rows are checked to lie
// inside `out` before any is written.
void pixel_values_cpu_py(const py::array_t<uint8_t, py::array::c_style>& pages, const Arr<int64_t>& hw,
                         const Arr<int64_t>& first_row, const py::object& lut_obj, py::array out) {
  if (pages.ndim() != 4 || pages.shape(3) != 3) throw std::invalid_argument("pixel_values_cpu: pages must be [P,H,W,3] uint8");
  const int32_t P = (int32_t)pages.shape(0), H = (int32_t)pages.shape(1), W = (int32_t)pages.shape(2);
  if (hw.size() != 2 * (py::ssize_t)P || first_row.size() != P)
    throw std::invalid_argument("pixel_values_cpu: hw must be [P, 2] and first_row [P]");
  const bool f32 = out.dtype().is(py::dtype::of<float>()), b16 = out.dtype().is(py::dtype::of<uint16_t>()),
             u8 = out.dtype().is(py::dtype::of<uint8_t>());
  if (!f32 && !b16 && !u8)
    throw std::invalid_argument("pixel_values_cpu: out must be float32, uint16 (bfloat16 bits) or uint8 (patches)");
  const py::ssize_t row = u8 ? 592 : 1176;
  py::array lut;
  if (u8) {
    if (!lut_obj.is_none()) throw std::invalid_argument("pixel_values_cpu: uint8 patches take no lut (pass None)");
  } else {
    if (lut_obj.is_none()) throw std::invalid_argument("pixel_values_cpu: float32 and bfloat16 rows need a lut");
    lut = py::reinterpret_borrow<py::array>(lut_obj);
    if (!lut.dtype().is(out.dtype()) || lut.size() != 768 || !(lut.flags() & py::array::c_style))
      throw std::invalid_argument("pixel_values_cpu: lut must be a contiguous [3, 256] array of out's dtype");
  }
  if (out.ndim() != 2 || out.shape(1) != row || !(out.flags() & py::array::c_style) || !out.writeable())
    throw std::invalid_argument("pixel_values_cpu: out must be a writable contiguous [N, " + std::to_string(row) +
                                "] array");
  // hw arrives as int64 (any integer array is cast to it) and is range-checked before it is narrowed, so a
  // size such as 2**32 + 28 is refused rather than wrapped to 28; the rows test is written so it cannot overflow.
  std::vector<int32_t> hw32(2 * (size_t)P);
  const int64_t* hs = hw.data();
  const int64_t* f = first_row.data();
  const int64_t N = (int64_t)out.shape(0);
  for (int32_t i = 0; i < P; ++i) {
    const int64_t h = hs[2 * i], w = hs[2 * i + 1];
    if (h == 0 || w == 0) continue;  // a skipped page (hw32 stays 0, 0 as the kernels expect)
    if (h < 0 || w < 0 || h > H || w > W || h % 28 || w % 28)
      throw std::invalid_argument("pixel_values_cpu: hw of page " + std::to_string(i) + ", " + std::to_string(h) +
                                  "x" + std::to_string(w) + ", is not a multiple of 28 inside the page buffer");
    const int64_t rows = (h / 14) * (w / 14);  // h, w <= INT32_MAX: no overflow
    if (f[i] < 0 || rows > N || f[i] > N - rows)
      throw std::invalid_argument("pixel_values_cpu: rows of page " + std::to_string(i) + " (first_row " +
                                  std::to_string(f[i]) + ", " + std::to_string(rows) + " rows) lie outside out's " +
                                  std::to_string(N) + " rows");
    hw32[2 * i] = (int32_t)h, hw32[2 * i + 1] = (int32_t)w;
  }
  const int32_t* s = hw32.data();
  const uint8_t* src = pages.data();
  void* o = out.mutable_data();
  const void* l = u8 ? nullptr : lut.data();
  py::gil_scoped_release nogil;
  if (u8)
    patches_u8_cpu(src, P, H, W, s, f, static_cast<uint8_t*>(o));
  else if (f32)
    pixel_values_cpu(src, P, H, W, s, f, static_cast<const float*>(l), static_cast<float*>(o));
  else
    pixel_values_cpu(src, P, H, W, s, f, static_cast<const uint16_t*>(l), static_cast<uint16_t*>(o));
}

// Tile-rasterizer tensors arrive as raw pointers (torch's data_ptr()) plus, for CUDA, the current
// stream, so the extension never links torch; glyph_rt/ops/raster.py prepares them.
RasterTileArgs tile_args(const py::dict& ptr, int32_t mode, bool ink_too, bool gray, int32_t out_type,
                         int32_t num_pages, int32_t tiles_per_page, float tol) {
  auto p = [&](const char* k) -> void* {
    if (!ptr.contains(k)) throw std::invalid_argument(std::string("raster: missing pointer ") + k);
    return reinterpret_cast<void*>(ptr[k].cast<uintptr_t>());
  };
  if (mode < 0 || mode > 4) throw std::invalid_argument("raster: unknown mode " + std::to_string(mode));
  if (mode == 3 && out_type != 1 && out_type != 2)
    throw std::invalid_argument("raster: pixel_values must be float32 or bfloat16");
  RasterTileArgs a;
  a.out = p("out");
  a.ink = static_cast<int32_t*>(p("ink"));
  a.bgv = static_cast<float*>(p("bgv"));
  a.lut = p("lut");
  a.meta = static_cast<const int32_t*>(p("meta"));
  a.out_off = static_cast<const int64_t*>(p("out_off"));
  a.glyph_start = static_cast<const int32_t*>(p("glyph_start"));
  a.glyph_items = static_cast<const int32_t*>(p("glyph_items"));
  a.g_x0 = static_cast<const int32_t*>(p("g_x0"));
  a.g_y0 = static_cast<const int32_t*>(p("g_y0"));
  a.g_w = static_cast<const int32_t*>(p("g_w"));
  a.g_h = static_cast<const int32_t*>(p("g_h"));
  a.g_off = static_cast<const int32_t*>(p("g_off"));
  a.g_rgb = static_cast<const int32_t*>(p("g_rgb"));
  a.rect_start = static_cast<const int32_t*>(p("rect_start"));
  a.rect_items = static_cast<const int32_t*>(p("rect_items"));
  a.r_box = static_cast<const int32_t*>(p("r_box"));
  a.r_rgb = static_cast<const int32_t*>(p("r_rgb"));
  a.atlas = static_cast<const uint8_t*>(p("atlas"));
  a.num_pages = num_pages;
  a.tiles_per_page = tiles_per_page;
  a.mode = mode;
  a.out_type = out_type;
  a.ink_too = ink_too;
  a.gray = gray;
  a.tol = tol;
  return a;
}

void run_raster_host(const py::dict& ptr, int32_t mode, bool ink_too, bool gray, int32_t out_type,
                     int32_t num_pages, int32_t tiles_per_page, float tol) {
  RasterTileArgs a = tile_args(ptr, mode, ink_too, gray, out_type, num_pages, tiles_per_page, tol);
  py::gil_scoped_release nogil;
  raster_tiles_host(a);
}

#ifdef GLYPH_RT_WITH_CUDA
void run_raster_cuda(const py::dict& ptr, int32_t mode, bool ink_too, bool gray, int32_t out_type,
                     int32_t num_pages, int32_t tiles_per_page, float tol, uintptr_t stream) {
  RasterTileArgs a = tile_args(ptr, mode, ink_too, gray, out_type, num_pages, tiles_per_page, tol);
  py::gil_scoped_release nogil;
  raster_cuda(a, reinterpret_cast<void*>(stream));
}

void run_gemm_cuda(uintptr_t a, int32_t a_type, uintptr_t b, uintptr_t bias, uintptr_t c, int32_t c_type,
                   int64_t M, int64_t N, int64_t K, int64_t sam, int64_t sak, int64_t sbk, int64_t sbn,
                   int64_t scm, int64_t scn, uintptr_t stream) {
  GemmArgs g;
  g.a = reinterpret_cast<const void*>(a);
  g.b = reinterpret_cast<const void*>(b);
  g.bias = reinterpret_cast<const void*>(bias);
  g.c = reinterpret_cast<void*>(c);
  g.M = M, g.N = N, g.K = K;
  g.sam = sam, g.sak = sak, g.sbk = sbk, g.sbn = sbn, g.scm = scm, g.scn = scn;
  g.a_type = a_type, g.c_type = c_type;
  py::gil_scoped_release nogil;
  gemm_cuda(g, reinterpret_cast<void*>(stream));
}
#endif

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "glyph_rt compiled extension: layout engine and rasterizers";
  m.def("unknown_codepoints", [](const Arr<uint32_t>& text, const Arr<int32_t>& lut) {
    std::vector<int32_t> v;
    {
      py::gil_scoped_release nogil;
      v = unknown_codepoints(text.data(), text.size(), lut.data(), lut.size());
    }
    return to_numpy(std::move(v));
  });
  m.def("layout", &run_layout, py::arg("text"), py::arg("lut"), py::arg("advance"),
        py::arg("missing_flag"), py::arg("space_slot"), py::arg("missing_slot"), py::arg("params"),
        py::arg("marker"), py::arg("width_1000") = py::none());
  m.def("pdf_numbers", [](const Arr<double>& v) {  // the layout's PDF numbers, for the tests
        py::array_t<double> num(v.size()), flt(v.size());
        for (py::ssize_t k = 0; k < v.size(); ++k) {
          num.mutable_data()[k] = pdf_number(v.data()[k]);
          flt.mutable_data()[k] = pdf_float(v.data()[k]);
        }
        return py::make_tuple(num, flt);
      }, py::arg("values"));
  m.def("raster_cpu", &raster_cpu, py::arg("out"), py::arg("page0"), py::arg("bg"), py::arg("rect_page"),
        py::arg("rect_box"), py::arg("rect_rgb"), py::arg("g_page"), py::arg("g_x"), py::arg("g_y"), py::arg("g_slot"),
        py::arg("g_color"), py::arg("data"), py::arg("offset"), py::arg("width"), py::arg("height"), py::arg("left"),
        py::arg("top"), py::arg("phases"), py::arg("palette"), py::arg("sx"), py::arg("sy"), py::arg("tol") = 5,
        py::arg("ink") = py::none(), py::arg("g_clip") = py::none());
  m.def("ink_extent", &ink_extent, py::arg("pages"), py::arg("tol") = 5);
  m.def("resize_width", &resize_width, py::arg("src"), py::arg("dst"), py::arg("first"), py::arg("weights"),
        py::arg("precision_bits"));
  m.def("pixel_values_cpu", &pixel_values_cpu_py, py::arg("pages"), py::arg("hw"), py::arg("first_row"),
        py::arg("lut"), py::arg("out"));
  m.def("raster_tiles_host", &run_raster_host, py::arg("ptr"), py::arg("mode"), py::arg("ink_too"), py::arg("gray"),
        py::arg("out_type"), py::arg("num_pages"), py::arg("tiles_per_page"), py::arg("tol"));
#ifdef GLYPH_RT_WITH_CUDA
  m.attr("with_cuda") = true;
  m.attr("cuda_archs") = py::str(GLYPH_RT_CUDA_ARCHS_STR);
  m.def("cuda_devices", &cuda_device_names);
  m.def("raster_cuda", &run_raster_cuda, py::arg("ptr"), py::arg("mode"), py::arg("ink_too"), py::arg("gray"),
        py::arg("out_type"), py::arg("num_pages"), py::arg("tiles_per_page"), py::arg("tol"), py::arg("stream"));
  m.def("gemm_cuda", &run_gemm_cuda, "patch-embedding GEMM on tensor cores (raw device pointers, strides in elements)");
#else
  m.attr("with_cuda") = false;
#endif
}
