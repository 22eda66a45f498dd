// Layout engine: text (UTF-32) -> lines -> pages -> glyph placements.
// Mirrors the reportlab Paragraph/Frame model used by Glyph's renderer so that line
// breaks and pagination match, while running in a single pass over the text.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace glyph_rt {

enum Align : int32_t { kLeft = 0, kCenter = 1, kRight = 2, kJustify = 3 };
enum Wrap : int32_t { kWrapWord = 0, kWrapCJK = 1 };

struct LayoutParams {
  // All lengths are in points (1/72 inch); y grows downwards from the page top.
  double frame_x = 16, frame_y = 16, frame_w = 563, frame_h = 810;
  double left_indent = 0, right_indent = 0, first_line_indent = 0;
  double leading = 10, ascent = 6.8;
  double space_before = 0, space_after = 0;
  double space_shrink = 0.05;       // reportlab's spaceShrinkage
  int32_t align = kLeft;
  int32_t wrap = kWrapWord;
  int32_t lines_per_paragraph = 30;  // Glyph joins this many source lines per Paragraph
  int32_t newline_marker = 0;        // 0: a line break; 1: insert marker glyphs inline
  int32_t tab_size = 4;
  int32_t max_pages = 1 << 30;
  // x as poppler draws reportlab's PDF of the page (pdf_scale = dpi / 72 > 0, with Atlas::width_1000): the
  // layout's moves and word spacing as reportlab prints them, each glyph's pen summed as poppler sums the
  // PDF's widths, and g_x at the centre of the sub-pixel bin (of pdf_phases per pixel) poppler draws it in.
  double font_size = 9;            // as configured: reportlab's widths (0.001 * size * thousandths of an em)
  double pdf_scale = 0;            // 0: off, pens summed from the atlas advances
  int32_t pdf_phases = 4;
  double pdf_frame_x = 16;         // the PDF numbers (as poppler reads them) of the paragraph's x, its left
  double pdf_left_indent = 0;      // indent (its text matrix's x) and the font size
  double pdf_font_size = 9;
  double pdf_avail_width = 563;    // reportlab's frame width (Paragraph.wrap's availWidth)
};

struct Atlas {
  const int32_t* lut = nullptr;   // codepoint -> slot, size lut_size, -1 = unknown
  int64_t lut_size = 0;
  const double* advance = nullptr;  // slot -> advance in points
  int32_t space_slot = -1;
  int32_t missing_slot = -1;      // replacement box
  const uint8_t* missing_flag = nullptr;  // slot -> 1 if drawn as replacement box
  int32_t n_slots = 0;            // size of advance and missing_flag; every lut entry is < n_slots
  const double* width_1000 = nullptr;  // slot -> reportlab's width in thousandths of an em (pdf_scale > 0)
};

// reportlab's rl_accel.fp_str of one number, and that text as poppler's Lexer and as Python's float() read it.
std::string fp_str(double v);
double pdf_number(double v);
double pdf_float(double v);

struct LayoutResult {
  // placements (one per drawn glyph)
  std::vector<int32_t> g_page, g_slot, g_src;
  std::vector<float> g_x, g_y;   // pen x and baseline y, points
  std::vector<uint8_t> g_color;  // 0 = font color, 1 = newline marker color
  // lines
  std::vector<int32_t> l_page, l_src_start, l_src_end;
  std::vector<float> l_x, l_y, l_width;
  // paragraph boxes (one per paragraph part on a page): page, x, y(top), w, h; double, as computed: the
  // PDF numbers of each part (its origin, first baseline) and with them poppler's baseline rows come from them
  std::vector<int32_t> b_page;
  std::vector<double> b_x, b_y, b_w, b_h;
  // pages
  std::vector<int32_t> p_src_start, p_src_end, p_line_start;
  int64_t missing = 0;       // glyphs drawn as replacement boxes
  int64_t stripped = 0;      // soft hyphens and zero-width spaces removed (as Glyph does)
  int64_t placed = 0;        // non-whitespace source characters placed (boxes included)
  int64_t marker_glyphs = 0; // glyphs drawn for visible newline markers (not source characters)
  int32_t pages = 0;
  bool truncated = false;    // stopped at max_pages
};

// Codepoints of `text` that the atlas does not know yet (sorted, unique).
std::vector<int32_t> unknown_codepoints(const uint32_t* text, int64_t n, const int32_t* lut,
                                        int64_t lut_size);

void layout(const uint32_t* text, int64_t n, const Atlas& atlas, const LayoutParams& p,
            const int32_t* marker_slots, int32_t n_marker, LayoutResult& out);

}  // namespace glyph_rt
