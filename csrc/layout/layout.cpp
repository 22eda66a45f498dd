#include "layout.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <stdexcept>
#include <string>

namespace glyph_rt {
namespace {

enum Kind : uint8_t { kDraw = 0, kNbsp = 1, kBreak = 2 };
// Item flags: kCjk breaks before in word mode; kWide and kNoStart steer reportlab's CJK wrap; kAdded marks
// a space that is no source character (reportlab's split adds one at each line end of a continuation).
enum Flag : uint8_t { kCjk = 1, kWide = 2, kNoStart = 4, kAdded = 8 };

struct Item {
  int32_t slot;
  int32_t src;
  float adv;
  uint8_t kind;
  uint8_t color;
  uint8_t flags;
  uint8_t spaces;  // kept spaces this item stands for (a tab is one item of tab_size spaces)
};

// A run of items placed on a line; gap = preceded by a (collapsed) breaking space.
struct Unit {
  int32_t start, end;
  bool gap;
};

struct Line {
  int32_t unit_start, unit_end;
  double width;
  int32_t spaces;  // breaking gaps between units
  int32_t nbsp;    // kept (non-breaking) spaces
  bool forced;  // ended by a line break (never justified)
  bool first;   // first line of its paragraph (first-line indent)
  int32_t src_start, src_end;
};

// reportlab's whitespace set less the characters handled separately.
inline bool is_break_space(uint32_t c) {
  switch (c) {
    case 0x0B: case 0x0C: case 0x1C: case 0x1D: case 0x1E: case 0x1F: case 0x85:
    case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
      return true;
    default:
      return c >= 0x2000 && c <= 0x200A;
  }
}

inline bool is_cjk(uint32_t c) {
  return (c >= 0x1100 && c <= 0x11FF) || (c >= 0x2E80 && c <= 0x9FFF) ||
         (c >= 0xA000 && c <= 0xA4CF) || (c >= 0xAC00 && c <= 0xD7AF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0xFE30 && c <= 0xFE4F) ||
         (c >= 0xFF00 && c <= 0xFFEF) || (c >= 0x20000 && c <= 0x3FFFF);
}

// reportlab's textsplit.ALL_CANNOT_START: kept on the line they would start, hanging into the margin.
constexpr uint32_t kCannotStart[] = {
    0x21, 0x22, 0x27, 0x29, 0x2C, 0x2E, 0x3A, 0x3B, 0x3F, 0x5D, 0xB0, 0x2010, 0x2015, 0x2030, 0x2032,
    0x2033, 0x2103, 0x3001, 0x3002, 0x3005, 0x300D, 0x300F, 0x3011, 0x3015, 0x3041, 0x3043, 0x3045, 0x3047,
    0x3049, 0x3063, 0x3083, 0x3085, 0x3087, 0x308E, 0x309B, 0x309C, 0x309D, 0x309E, 0x30A1, 0x30A3, 0x30A5,
    0x30A7, 0x30A9, 0x30C3, 0x30E3, 0x30E5, 0x30E7, 0x30EE, 0x30F5, 0x30F6, 0x30FB, 0x30FC, 0x30FD, 0x30FE,
    0xFF05, 0xFF09, 0xFF3D, 0xFFE0};

// kCannotStart's ASCII members as two 64-bit masks: text is mostly ASCII, and a binary search per
// character cost ~20% of the layout of Latin text
constexpr uint64_t ascii_cannot_start(uint32_t word) {
  uint64_t m = 0;
  for (uint32_t c : kCannotStart)
    if (c < 128 && c / 64 == word) m |= uint64_t{1} << (c % 64);
  return m;
}
constexpr uint64_t kAsciiCannotStart[2] = {ascii_cannot_start(0), ascii_cannot_start(1)};

inline uint8_t flags_of(uint32_t c) {
  if (c < 128) return ((kAsciiCannotStart[c / 64] >> (c % 64)) & 1) ? kNoStart : 0;  // not CJK, not wide
  uint8_t f = is_cjk(c) ? kCjk : 0;
  if (c >= 0x3000 && c < 0x110000) f |= kWide;  // codepoints past Unicode are shaped clusters
  if (std::binary_search(std::begin(kCannotStart), std::end(kCannotStart), c)) f |= kNoStart;
  return f;
}

class Engine {
 public:
  Engine(const Atlas& a, const LayoutParams& p, LayoutResult& out)
      : a_(a), p_(p), out_(out) {
    space_w_ = a_.space_slot >= 0 ? a_.advance[a_.space_slot] : 0.0;
    frame_lines_ = std::floor(p_.frame_h / p_.leading);  // as paginate counts a frame's lines
    later_w_ = p_.frame_w - p_.left_indent - p_.right_indent;
    first_w_ = later_w_ - p_.first_line_indent;
    // With reportlab's widths (Atlas::width_1000), lines break on reportlab's own sums: each word 0.001 * size *
    // its thousandths of an em, the space, the line widths from its frame width (Paragraph.wrap, breakLines).
    rl_ = a_.width_1000 != nullptr && a_.space_slot >= 0;
    if (rl_) {
      k001_ = 0.001 * p_.font_size;
      space_rl_ = k001_ * a_.width_1000[a_.space_slot];
      const double avail = p_.pdf_avail_width;
      later_w_ = avail - p_.left_indent - p_.right_indent;
      first_w_ = avail - (p_.left_indent + p_.first_line_indent) - p_.right_indent;
    }
    pdf_ = rl_ && p_.pdf_scale > 0;
    if (pdf_) pdf_em_.assign((size_t)a_.n_slots, std::nan(""));
  }

  int32_t slot_of(uint32_t c) {
    int32_t s = (int64_t)c < a_.lut_size ? a_.lut[c] : -1;
    if (__builtin_expect(s >= a_.n_slots, 0)) bad_slot(c, s);
    return s < 0 ? a_.missing_slot : s;
  }

  [[noreturn]] __attribute__((noinline, cold)) void bad_slot(uint32_t c, int32_t s) const {
    throw std::out_of_range("layout: the atlas maps codepoint " + std::to_string(c) + " to slot " +
                            std::to_string(s) + ", outside its " + std::to_string(a_.n_slots) + " slots");
  }

  // Appends the items of source text [b, e) (one source line, no '\n').
  void push_text(const uint32_t* t, int64_t b, int64_t e, uint8_t color, int32_t src_override) {
    // At most one item per character (a run of spaces gives one item or one per space): written
    // through a pointer into room made once, then trimmed.
    const size_t base = items_.size();
    items_.resize(base + (size_t)(e - b));
    Item* w = items_.data() + base;
    push_items(t, b, e, color, src_override, w);
    items_.resize((size_t)(w - items_.data()));
  }

  void push_items(const uint32_t* t, int64_t b, int64_t e, uint8_t color, int32_t src_override, Item*& w) {
    int64_t i = b;
    while (i < e) {
      uint32_t c = t[i];
      int32_t src = src_override >= 0 ? src_override : (int32_t)i;
      if (c == ' ' || c == '\t') {
        // A run of spaces/tabs: one space is a break; a longer run is kept (non-breaking).
        int64_t j = i;
        int64_t width = 0;
        while (j < e && (t[j] == ' ' || t[j] == '\t')) {
          width += t[j] == '\t' ? p_.tab_size : 1;
          ++j;
        }
        if (width == 1) {
          *w++ = Item{-1, src, (float)space_w_, kBreak, color, 0, 1};
        } else {  // one kept item per space or tab (a tab is tab_size spaces wide, never split)
          for (int64_t k = i; k < j; ++k) {
            int32_t s2 = src_override >= 0 ? src_override : (int32_t)k;
            uint8_t sw = (uint8_t)(t[k] == '\t' ? p_.tab_size : 1);
            *w++ = Item{-1, s2, (float)(space_w_ * sw), kNbsp, color, 0, sw};
          }
        }
        i = j;
        continue;
      }
      if (c == 0xAD || c == 0x200B) {  // removed by Glyph's renderer: counted, not drawn
        ++out_.stripped;
        ++i;
        continue;
      }
      if (is_break_space(c)) {
        *w++ = Item{-1, src, (float)space_w_, kBreak, color, 0, 1};
      } else if (c == 0xA0) {
        *w++ = Item{-1, src, (float)space_w_, kNbsp, color, 0, 1};
      } else {
        int32_t s = slot_of(c);
        *w++ = Item{s, src, (float)a_.advance[s], kDraw, color, flags_of(c), 0};
      }
      ++i;
    }
  }

  // Breaks items [b, e), the text between two forced line breaks, into lines (the last one left open).
  void break_items(int32_t b, int32_t e, bool para_end) {
    if (p_.wrap == kWrapCJK) {
      break_cjk(b, e, b == 0, para_end);
    } else {
      make_units(b, e);
      break_segment();
    }
  }

  // Splits items [b, e) into units: words, and in word mode every CJK character on its own.
  void make_units(int32_t b, int32_t e) {
    units_.resize(std::max(0, e - b));  // at most one unit per item, written by index, trimmed
    size_t nu = 0;
    bool gap = false;
    int32_t i = b;
    while (i < e) {
      const Item& it = items_[i];
      if (it.kind == kBreak) {
        gap = true;
        ++i;
        continue;
      }
      int32_t j = i + 1;
      if (!(it.flags & kCjk)) {
        while (j < e && items_[j].kind != kBreak && !(items_[j].flags & kCjk)) ++j;
      }
      units_[nu++] = Unit{i, j, gap};
      gap = false;
      i = j;
    }
    units_.resize(nu);
  }

  double unit_width(const Unit& u) const {
    double w = 0;
    if (rl_) {  // a word: its characters' thousandths of an em summed, then scaled
      for (int32_t k = u.start; k < u.end; ++k) {
        const Item& it = items_[k];
        if (it.kind == kDraw) w += a_.width_1000[it.slot];
        else for (int32_t j = 0; j < it.spaces; ++j) w += a_.width_1000[a_.space_slot];
      }
      return k001_ * w;
    }
    for (int32_t k = u.start; k < u.end; ++k) w += items_[k].adv;
    return w;
  }

  double break_space() const { return rl_ ? space_rl_ : space_w_; }

  double max_width(bool first) const { return first ? first_w_ : later_w_; }

  void close_line(bool forced) {
    Line l;
    l.unit_start = line_unit_start_;
    l.unit_end = (int32_t)placed_.size();
    l.width = cur_;
    l.spaces = spaces_;
    l.nbsp = 0;
    for (int32_t ui = l.unit_start; ui < l.unit_end; ++ui)
      for (int32_t k = placed_[ui].start; k < placed_[ui].end; ++k)
        if (items_[k].kind == kNbsp) l.nbsp += items_[k].spaces;
    l.forced = forced;
    l.first = para_first_line_;
    int32_t ub = l.unit_start, ue = l.unit_end;  // added spaces are no source characters
    while (ub < ue && (items_[placed_[ub].start].flags & kAdded)) ++ub;
    while (ue > ub && (items_[placed_[ue - 1].start].flags & kAdded)) --ue;
    if (ue > ub) {
      l.src_start = items_[placed_[ub].start].src;
      l.src_end = items_[placed_[ue - 1].end - 1].src + 1;
    } else {
      l.src_start = l.src_end = ub < l.unit_end ? items_[placed_[ub].start].src : empty_src_;
    }
    lines_.push_back(l);
    para_first_line_ = false;
    line_unit_start_ = (int32_t)placed_.size();
    cur_ = 0;
    spaces_ = 0;
  }

  bool line_empty() const { return (int32_t)placed_.size() == line_unit_start_; }

  void place(const Unit& u, double w) {
    bool gap = u.gap && !line_empty();
    if (gap) {
      if (!rl_ || w > 0) cur_ += break_space();  // reportlab adds no width, and no space, for an empty word
      ++spaces_;
    }
    placed_.push_back({u.start, u.end, gap});
    cur_ += w;
  }

  // Greedy line filling over units_ with reportlab's rules (space shrinkage, long words).
  void break_segment() {
    for (const Unit& u : units_) {
      double w = unit_width(u);
      double maxw = max_width(para_first_line_);
      bool gap = u.gap && !line_empty();
      double new_w, lim;
      if (rl_) {  // Paragraph.breakLines: the spaces' shrinkage is (this gap's space + the line's spaces) * 5%
        new_w = w > 0 ? cur_ + (gap ? space_rl_ : 0.0) + w : cur_;
        lim = maxw + ((gap ? space_rl_ : 0.0) + spaces_ * space_rl_) * p_.space_shrink;
      } else {
        new_w = cur_ + (gap ? space_w_ : 0.0) + w;
        lim = maxw + p_.space_shrink * space_w_ * (spaces_ + (gap ? 1 : 0));
      }
      if (new_w <= lim || line_empty()) {
        if (w > maxw && new_w > lim) {
          split_long(u, maxw);
        } else {
          place(u, w);
        }
        continue;
      }
      if (w > maxw) {
        split_long(u, maxw);
        continue;
      }
      close_line(false);
      place(Unit{u.start, u.end, false}, w);
    }
  }

  // reportlab's CJK wrap (paragraph.cjkFragSplit, textsplit.dumbSplit) over the characters of items [b, e):
  // reportlab's cleaner has made each run of breaking whitespace one space and stripped the paragraph's
  // ends; a space is a character like any other (no shrinkage, kept at line ends). A line ends at the
  // character that takes it past the width; in a non-wide run (< U+3000) the break backs off to after
  // the last space or wide character in the line's second half; a character that cannot start a line
  // stays on it, hanging into the margin.
  void break_cjk(int32_t b, int32_t e, bool para_start, bool para_end) {
    units_.clear();
    for (int32_t k = b; k < e; ++k) {
      bool space = items_[k].kind == kBreak;
      if (space && ((k > b && items_[k - 1].kind == kBreak) || (para_start && units_.empty()))) continue;
      units_.push_back(Unit{k, k + 1, false});
    }
    while (para_end && !units_.empty() && items_[units_.back().start].kind == kBreak) units_.pop_back();
    wrap_cjk(max_width(para_first_line_));
  }

  // cjkFragSplit's loop over the characters units_ (one item each): closes every line it fills, and
  // places the rest on the open line.
  void wrap_cjk(double maxw) {
    const int32_t n = (int32_t)units_.size();
    auto item = [&](int32_t u) -> const Item& { return items_[units_[u].start]; };
    int32_t i = 0, start = 0;
    double used = 0;
    while (i < n) {
      const Item& it = item(i++);
      used += char_width(it);
      if (!(used > maxw + 1e-6 && used > 0)) continue;
      int32_t u = i - 1;
      if (it.kind != kDraw || !(it.flags & kWide)) {
        for (int32_t j = i - 1; j > ((start + i) >> 1); --j) {
          if ((item(j).kind != kDraw || (item(j).flags & kWide)) && j + 1 < i) {
            u = j + 1;
            i = j + 2;
            break;
          }
        }
      }
      if (!(item(u).flags & kNoStart) && i > start + 1) --i;
      for (int32_t k = start; k < i; ++k) place_char(units_[k]);
      close_line(false);
      start = i;
      used = 0;
      maxw = max_width(false);
    }
    for (int32_t k = start; k < n; ++k) place_char(units_[k]);
  }

  void place_char(const Unit& u) {
    const Item& it = items_[u.start];
    if (it.kind == kBreak) ++spaces_;
    placed_.push_back(u);
    cur_ += char_width(it);
  }

  double char_width(const Item& it) const {
    if (rl_) return it.kind == kDraw ? k001_ * a_.width_1000[it.slot] : space_rl_ * it.spaces;
    return it.kind == kDraw ? it.adv : space_w_ * it.spaces;
  }

  // A word wider than the line: fill the current line, then whole lines, char by char.
  void split_long(const Unit& u, double maxw) {
    bool gap = u.gap && !line_empty();
    double acc = line_empty() ? 0.0 : cur_ + (gap ? break_space() : 0.0);
    int32_t piece = u.start;
    bool first_piece = true;
    for (int32_t k = u.start; k < u.end; ++k) {
      double cw = rl_ ? char_width(items_[k]) : items_[k].adv;
      double next_w = max_width(false);
      if (acc + cw > maxw && (k > piece || cw <= next_w)) {
        if (k > piece) {
          Unit pu{piece, k, first_piece ? u.gap : false};
          place(pu, unit_width(pu));
        }
        if (!line_empty()) close_line(false);
        first_piece = false;
        piece = k;
        acc = 0;
        maxw = next_w;
      }
      acc += cw;
    }
    if (u.end > piece) {
      Unit pu{piece, u.end, first_piece ? u.gap : false};
      place(pu, unit_width(pu));
    }
  }

  void add_box(int32_t page, double top, int32_t nlines) {
    out_.b_page.push_back(page);
    out_.b_x.push_back(p_.frame_x + p_.left_indent);
    out_.b_y.push_back(top);
    out_.b_w.push_back(p_.frame_w - p_.left_indent - p_.right_indent);
    out_.b_h.push_back(nlines * p_.leading);
  }

  void new_page() {
    ++page_;
    cursor_ = 0;
    at_top_ = true;
    out_.p_src_start.push_back(-1);
    out_.p_src_end.push_back(-1);
    out_.p_line_start.push_back((int32_t)out_.l_page.size());
  }

  // Emits lines [b, e) of the current paragraph on the current page starting at `top`.
  // With `lead`, that line comes first (an empty continuation line, see paginate).
  void emit_lines(int32_t b, int32_t e, double top, bool para_has_end, const Line* lead = nullptr) {
    const int32_t n_lines = (int32_t)lines_.size();
    const int32_t shift_rows = lead ? 1 : 0;
    PdfText text{p_.pdf_left_indent};  // reportlab writes each paragraph box as one text object
    for (int32_t li = b - shift_rows; li < e; ++li) {
      const Line& l = li < b ? *lead : lines_[li];
      double maxw = max_width(l.first);
      double offset = l.first ? p_.first_line_indent : 0.0;
      double x = p_.frame_x + p_.left_indent + offset;
      double extra = maxw - l.width;
      double space_add = 0.0, shift = 0.0;
      bool last = para_has_end && li == n_lines - 1;
      // A part that ends a page right after a line break: reportlab breaks it again without that break, so
      // its last line is the part's last, not a forced one (an over-long one is squeezed, also justified).
      bool forced = l.forced;
      if (!para_has_end && li == e - 1 && forced) forced = false, last = true;
      // CJK lines: reportlab counts the kept spaces only (one "word" per line)
      const int32_t n_space = p_.wrap == kWrapCJK ? l.nbsp : l.spaces + l.nbsp;
      // reportlab squeezes an over-long line (allowed by the 5% space shrinkage) back to the frame
      // in every alignment; justify also stretches all but the last and forced lines.
      // The share is the PDF's word spacing: every space drawn gets it, kept ones too (reportlab
      // writes U+00A0 as code 32).
      if (p_.align == kJustify) {
        bool keep = forced || (-1e-8 < extra && extra <= 1e-8) || (last && extra > -1e-8);
        if (!keep && n_space > 0) space_add = extra / n_space;
      } else if (extra <= -1e-8 && n_space > 0) {
        space_add = extra / n_space;
      } else if (p_.align == kCenter) {
        shift = extra * 0.5;
      } else if (p_.align == kRight) {
        shift = extra;
      }
      x += shift;
      double y = top + p_.ascent + (li - b + shift_rows) * p_.leading;
      out_.l_page.push_back(page_);
      out_.l_x.push_back((float)x);
      out_.l_y.push_back((float)y);
      out_.l_width.push_back((float)(l.width + space_add * (l.spaces + l.nbsp)));
      out_.l_src_start.push_back(l.src_start);
      out_.l_src_end.push_back(l.src_end);
      int32_t& ps = out_.p_src_start.back();
      if (ps < 0) ps = l.src_start;
      out_.p_src_end.back() = l.src_end;
      // at most one glyph per item: room is made once per line, written through pointers, trimmed
      const size_t g0 = out_.g_x.size();
      size_t room = 0;
      for (int32_t ui = l.unit_start; ui < l.unit_end; ++ui) room += placed_[ui].end - placed_[ui].start;
      resize_glyphs(g0 + room);
      int32_t *gp = out_.g_page.data() + g0, *gs = out_.g_slot.data() + g0, *gr = out_.g_src.data() + g0;
      float *gx = out_.g_x.data() + g0, *gy = out_.g_y.data() + g0;
      uint8_t* gc = out_.g_color.data() + g0;
      size_t m = 0;
      auto put = [&](const Item& it, double gxv) {
        gp[m] = page_;
        gs[m] = it.slot;
        gr[m] = it.src;
        gx[m] = (float)gxv;
        gy[m] = (float)y;
        gc[m] = it.color;
        ++m;
        if (it.color == 0) {  // source characters; marker glyphs are not part of the text
          ++out_.placed;
          out_.missing += a_.missing_flag[it.slot];  // counted when drawn, not when read
        } else {
          ++out_.marker_glyphs;
        }
      };
      if (pdf_) {  // the line as drawn: reportlab's word spacing can make it wider than the engine's own sum
        out_.l_width.back() = (float)emit_pdf_line(text, l, offset, shift, space_add, put);
      } else {
        double pen = x;
        for (int32_t ui = l.unit_start; ui < l.unit_end; ++ui) {
          const Unit& u = placed_[ui];
          if (u.gap) pen += space_w_ + space_add;
          for (int32_t k = u.start; k < u.end; ++k) {
            const Item& it = items_[k];
            if (it.kind == kDraw) put(it, pen);
            pen += it.kind == kDraw ? it.adv : (space_w_ + space_add) * it.spaces;
          }
        }
      }
      resize_glyphs(g0 + m);
    }
  }

  // A reportlab text object (one paragraph box) as poppler reads it: where each line starts. reportlab
  // moves to a line's start with `Td` (textobject.moveCursor), merging a move with the `Td` written just
  // before it, which it reads back with float(); poppler adds each `Td` it reads to its line matrix
  // (Gfx::opTextMove) and starts the line at that plus the text matrix's x (`Tm`, the left indent).
  struct PdfText {
    double tm_x;
    double line_x = 0;
    bool has_pending = false;  // the last Td written, while the next move can still merge with it
    double pending = 0;
    void move(double dx) {
      if (dx >= -1e-6 && dx <= 1e-6) return;  // paragraph.setXPos writes no tiny moves
      if (has_pending) dx += pdf_float(pending);
      pending = dx;
      has_pending = true;
    }
    double line_start() {  // the pen at the next text, which ends any pending move
      if (has_pending) line_x += pdf_number(pending);
      has_pending = false;
      return line_x + tm_x;
    }
  };

  double pdf_em(int32_t slot) {  // poppler's width of a glyph: the /Widths entry it reads, times 0.001
    double& v = pdf_em_[slot];
    if (std::isnan(v)) v = pdf_number(a_.width_1000[slot]) * 0.001;
    return v;
  }

  // One line as reportlab writes it (paragraph._*DrawParaLineX) and poppler draws it: the line's moves and
  // word spacing (`space_add`, or else `shift`, from the line's free space, which with reportlab's widths is
  // reportlab's) as printed numbers, then each glyph's pen summed in double from the PDF's widths
  // (Gfx::doShowText); each glyph is placed at the centre of the sub-pixel bin poppler draws it in.
  // Returns the width drawn (the pen's advance over the line, points).
  template <typename Put>
  double emit_pdf_line(PdfText& text, const Line& l, double offset, double shift, double space_add, Put&& put) {
    double tw = 0.0, back = offset;
    if (space_add == 0.0) {
      back = offset + shift;
      text.move(back);
    } else {  // the word spacing carries the free space; reportlab's centre and right skip the offset's move
      tw = pdf_number(space_add);
      if (p_.align == kLeft || p_.align == kJustify) text.move(offset);
    }
    const double start = text.line_start();
    double pen = start;
    const double fs = p_.pdf_font_size, k = p_.pdf_scale, ph = p_.pdf_phases, x0 = p_.pdf_frame_x * p_.pdf_scale;
    const double space = pdf_em(a_.space_slot) * fs + tw;
    for (int32_t ui = l.unit_start; ui < l.unit_end; ++ui) {
      const Unit& u = placed_[ui];
      if (u.gap) pen += space;
      for (int32_t j = u.start; j < u.end; ++j) {
        const Item& it = items_[j];
        if (it.kind == kDraw) {
          put(it, (std::floor((k * pen + x0) * ph) + 0.5) / (ph * k));
          pen += pdf_em(it.slot) * fs;
        } else {
          for (int32_t r = 0; r < it.spaces; ++r) pen += space;
        }
      }
    }
    text.move(-back);
    return pen - start;
  }

  void resize_glyphs(size_t n) {
    out_.g_page.resize(n);
    out_.g_slot.resize(n);
    out_.g_src.resize(n);
    out_.g_x.resize(n);
    out_.g_y.resize(n);
    out_.g_color.resize(n);
  }

  // Places the lines of the current paragraph into frames, splitting across pages.
  void paginate() {
    int32_t n = (int32_t)lines_.size();
    int32_t idx = 0;
    // reportlab's continuation of a paragraph split right after a line break starts at that break (word
    // wrap; CJK wrap keeps the break on the line it ends), which yields an empty first line on the next
    // page: `lead`, drawn before lines_[idx] (not stored in lines_,
    // so that a paragraph of many pages costs no insertions)
    bool lead = false;
    Line lead_line{};
    while (true) {
      if (out_.truncated) return;
      double s = at_top_ ? 0.0 : std::max(p_.space_before - prev_after_, 0.0);
      double avail = p_.frame_h - cursor_ - s;
      const int32_t rows = n - idx + (lead ? 1 : 0);
      double h = rows * p_.leading;
      if (avail > 0 && h <= avail + 1e-6) {
        double top = p_.frame_y + cursor_ + s;
        if (rows > 0) add_box(page_, top, rows);
        emit_lines(idx, n, top, true, lead ? &lead_line : nullptr);
        cursor_ += s + h + p_.space_after;
        prev_after_ = p_.space_after;
        at_top_ = false;
        return;
      }
      int32_t k = avail > 0 ? (int32_t)std::floor(avail / p_.leading) : 0;
      if (k <= 1) {  // reportlab leaves no orphan line at a page bottom
        if (at_top_) k = std::max(k, 1);  // a frame shorter than two lines: place one anyway
        else {
          if (page_ + 1 >= p_.max_pages) { out_.truncated = true; return; }
          new_page();
          continue;
        }
      }
      k = std::min(k, rows);
      double top = p_.frame_y + cursor_ + s;
      add_box(page_, top, k);
      const int32_t real = k - (lead ? 1 : 0);  // lines of lines_ in this box
      emit_lines(idx, idx + real, top, idx + real == n, lead ? &lead_line : nullptr);
      const bool after_lead_only = lead && real == 0;
      idx += real;
      lead = false;
      // Not in a frame that holds a single line: the empty line would fill every following page and the
      // text never advances. Not in CJK wrap: cjkFragSplit ends a line with its break (the break is the
      // line's last character), so the continuation starts at the next line's first character.
      bool prev_forced = after_lead_only || (idx > 0 && lines_[idx - 1].forced);
      if (idx < n && prev_forced && !p_.newline_marker && frame_lines_ >= 2 && p_.wrap != kWrapCJK) {
        lead_line = lines_[idx];
        lead_line.unit_end = lead_line.unit_start;
        lead_line.width = 0;
        lead_line.spaces = lead_line.nbsp = 0;
        lead_line.forced = true;
        lead_line.first = false;
        lead_line.src_start = lead_line.src_end = after_lead_only ? lead_line.src_start : lines_[idx - 1].src_end;
        lead = true;
      }
      if (idx < n && p_.wrap == kWrapCJK) n = rewrap_cjk(idx);
      if (idx >= n) {
        cursor_ += s + k * p_.leading + p_.space_after;
        prev_after_ = p_.space_after;
        at_top_ = false;
        return;
      }
      if (page_ + 1 >= p_.max_pages) { out_.truncated = true; return; }
      new_page();
    }
  }

  // reportlab's continuation of a paragraph split in CJK wrap (Paragraph.split, _split_blParaHard): the
  // characters of lines [idx, n), a space added after each but the last line unless it ends in one (a
  // forced line's break gets it: one per break), wrapped again by cjkFragSplit with the later lines' width.
  // A line that filled its width pushes its added space onto the next line, which may then break anew.
  // Replaces those lines; returns the paragraph's new line count.
  int32_t rewrap_cjk(int32_t idx) {
    const std::vector<Line> old(lines_.begin() + idx, lines_.end());
    lines_.resize(idx);
    line_unit_start_ = (int32_t)placed_.size();
    cur_ = 0;
    spaces_ = 0;
    para_first_line_ = false;
    units_.clear();
    const int32_t n_old = (int32_t)old.size();
    for (int32_t li = 0; li < n_old; ++li) {
      const Line& l = old[li];
      for (int32_t ui = l.unit_start; ui < l.unit_end; ++ui) units_.push_back(placed_[ui]);
      const bool last = li == n_old - 1;
      const int32_t end_item = l.unit_end > l.unit_start ? placed_[l.unit_end - 1].start : -1;
      const int32_t src = l.src_end;
      if (l.forced) {  // the break's own (empty) text becomes the space; wrapping stops at the break
        Unit brk{-1, -1, false};
        if (end_item >= 0 && (items_[end_item].flags & kAdded)) {
          brk = units_.back();
          units_.pop_back();
        } else if (!last) {
          items_.push_back(Item{-1, src, (float)space_w_, kBreak, 0, kAdded, 1});
          brk = Unit{(int32_t)items_.size() - 1, (int32_t)items_.size(), false};
        }
        wrap_cjk(max_width(false));
        if (brk.start >= 0) place_char(brk);
        empty_src_ = src;
        close_line(true);
        units_.clear();
      } else if (!last && !(end_item >= 0 && items_[end_item].kind == kBreak)) {
        items_.push_back(Item{-1, src, (float)space_w_, kBreak, 0, kAdded, 1});
        units_.push_back(Unit{(int32_t)items_.size() - 1, (int32_t)items_.size(), false});
      }
    }
    wrap_cjk(max_width(false));
    if (!line_empty()) close_line(false);
    return (int32_t)lines_.size();
  }

  void run(const uint32_t* t, int64_t n, const int32_t* marker, int32_t n_marker) {
    for (auto* v : {&out_.g_page, &out_.g_slot, &out_.g_src}) v->reserve(n);
    for (auto* v : {&out_.g_x, &out_.g_y}) v->reserve(n);
    out_.g_color.reserve(n);
    new_page();
    // Source line boundaries ("\r\n" and lone "\r" count as newlines).
    int64_t pos = 0;
    while (pos <= n && !out_.truncated) {
      items_.clear();
      placed_.clear();
      lines_.clear();
      line_unit_start_ = 0;
      cur_ = 0;
      spaces_ = 0;
      para_first_line_ = true;
      int32_t seg_start = 0;
      for (int32_t ln = 0; ln < std::max(1, p_.lines_per_paragraph) && pos <= n; ++ln) {
        int64_t e = pos;
        while (e < n && t[e] != '\n' && t[e] != '\r') ++e;
        if (ln > 0) {
          if (p_.newline_marker) {
            for (int32_t m = 0; m < n_marker; ++m) {
              uint32_t mc = (uint32_t)marker[m];
              push_text(&mc, 0, 1, 1, (int32_t)(pos - 1));
            }
          } else {
            // a line break ends the current line, even an empty one
            break_items(seg_start, (int32_t)items_.size(), false);
            empty_src_ = (int32_t)(pos - 1);
            close_line(true);
            seg_start = (int32_t)items_.size();
          }
        }
        empty_src_ = (int32_t)pos;
        push_text(t, pos, e, 0, -1);
        int64_t next = e;
        if (e < n) next = (t[e] == '\r' && e + 1 < n && t[e + 1] == '\n') ? e + 2 : e + 1;
        else next = n + 1;
        pos = next;
      }
      break_items(seg_start, (int32_t)items_.size(), true);
      if (!line_empty()) close_line(false);
      paginate();
    }
    out_.pages = page_ + 1;
  }

 private:
  const Atlas& a_;
  const LayoutParams& p_;
  LayoutResult& out_;
  double space_w_, first_w_, later_w_, frame_lines_;
  std::vector<Item> items_;
  std::vector<Unit> units_, placed_;
  std::vector<Line> lines_;
  int32_t line_unit_start_ = 0, spaces_ = 0, empty_src_ = 0, page_ = -1;
  double cur_ = 0, cursor_ = 0, prev_after_ = 0;
  bool para_first_line_ = true, at_top_ = true;
  bool rl_ = false, pdf_ = false;
  double k001_ = 0, space_rl_ = 0;  // rl_: 0.001 * font size, reportlab's space width
  std::vector<double> pdf_em_;  // per slot, computed when first drawn (NaN: not yet)
};

}  // namespace

namespace {
constexpr int kFpMax = 400;  // fp_str of any finite double: up to 309 digits, a sign, a point and 6 decimals

// fp_str into buf (kFpMax chars); returns its length. Non-finite numbers (which reportlab cannot print) give "0".
int fp_chars(double v, char* buf) {
  static const double log10e = std::log(10.0);
  const double a = std::fabs(v);
  if (!(a > 1e-7) || !std::isfinite(v)) {
    buf[0] = '0';
    return 1;
  }
  const int places = a <= 1 ? 6 : std::min(std::max(0, 6 - (int)(std::log(a) / log10e)), 6);
#if defined(__cpp_lib_to_chars) && __cpp_lib_to_chars >= 201611L
  int n = (int)(std::to_chars(buf, buf + kFpMax, v, std::chars_format::fixed, places).ptr - buf);
#else
  int n = std::snprintf(buf, kFpMax, "%.*f", places, v);
#endif
  if (places) {
    while (buf[n - 1] == '0') --n;
    if (buf[n - 1] == '.') --n;
  }
  if (n > 1 && buf[0] == '0') {
    std::memmove(buf, buf + 1, (size_t)--n);
  }
  return n;
}

double parse_double(const char* b, const char* e) {  // correctly rounded, as Python's float()
  double x = 0.0;
#if defined(__cpp_lib_to_chars) && __cpp_lib_to_chars >= 201611L
  std::from_chars(b, e, x);
#else
  x = std::strtod(std::string(b, e).c_str(), nullptr);
#endif
  return x;
}
}  // namespace

std::string fp_str(double v) {
  char buf[kFpMax];
  return std::string(buf, (size_t)fp_chars(v, buf));
}

double pdf_number(double v) {
  char buf[kFpMax];
  const int n = fp_chars(v, buf);
  const bool neg = buf[0] == '-';
  const char* b = buf + (neg ? 1 : 0);
  const char* e = buf + n;
  const char* dot = std::find(b, e, '.');
  double x = dot > b ? parse_double(b, dot) : 0.0, scale = 0.1;
  for (const char* c = dot + (dot < e ? 1 : 0); c < e; ++c) {
    x = x + scale * (*c - '0');
    scale *= 0.1;
  }
  return neg ? -x : x;
}

double pdf_float(double v) {
  char buf[kFpMax];
  const int n = fp_chars(v, buf);
  return parse_double(buf, buf + n);
}

std::vector<int32_t> unknown_codepoints(const uint32_t* text, int64_t n, const int32_t* lut,
                                        int64_t lut_size) {
  std::vector<uint8_t> seen(0x110000 / 8 + 1, 0);
  std::vector<int32_t> out;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t c = text[i];
    if (c >= 0x110000) c = 0xFFFD;
    if ((int64_t)c < lut_size && lut[c] >= 0) continue;
    uint8_t& b = seen[c >> 3];
    uint8_t m = (uint8_t)(1u << (c & 7));
    if (b & m) continue;
    b |= m;
    out.push_back((int32_t)c);
  }
  std::sort(out.begin(), out.end());
  return out;
}

void layout(const uint32_t* text, int64_t n, const Atlas& atlas, const LayoutParams& p,
            const int32_t* marker_slots, int32_t n_marker, LayoutResult& out) {
  Engine e(atlas, p, out);
  e.run(text, n, marker_slots, n_marker);
}

}  // namespace glyph_rt
