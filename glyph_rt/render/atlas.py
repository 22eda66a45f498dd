"""FontAtlas: coverage bitmaps and metrics of every glyph, per (fonts, size, dpi, horizontal scale).

Glyphs are rasterized once by FreeType, unhinted (as vector renderers such as poppler draw
PDF text), at `subpixel_phases` horizontal sub-pixel offsets, so that pens placed at the
font's exact advances land on the right phase; a size that is not a whole number of pixels is
drawn as poppler does, from the rounded pixel size through a scaling transform
(`poppler_font_scale`), and a font too large for poppler's sub-pixel positioning
(`poppler_glyph_rows`) has phase 0's bitmap at every phase. Everything is stored as flat arrays that the
C++ and GPU rasterizers read as they are:

    data    uint8  [total]           all bitmaps, row-major, concatenated
    offset  int64  [slots * phases]  start of each bitmap in data
    width, height, left, top  int32 [slots * phases]  bitmap size and origin (px from the pen)
    advance float64 [slots]          pen advance in points (unscaled by horizontal_scale)
    width_1000 float64 [slots]       advance in thousandths of an em, as reportlab computes it (TTFont charWidths)
    lut     int32  [0x110000]        codepoint -> slot (-1 = not built yet)

Slot 0 is the first font's missing glyph (glyph 0, .notdef) drawn for characters no font covers; slot 1 is the space.
Shaped scripts (see `shaping`) add slots held by glyph id rather than by codepoint: each is one
cluster of HarfBuzz glyphs (a Devanagari syllable, a Thai base with its marks) composited at its
positions, keyed by font and glyphs (`cluster_slot`, cached with the rest).
Atlases are cached in memory and on disk (~/.cache/glyph_rt/atlas, or $GLYPH_RT_CACHE). A disk
cache file is verified when read (checksum, array sizes, index ranges) and rebuilt on any mismatch.
All access goes through `lock`: `arrays()` returns a consistent snapshot that later growth never
changes.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import math
import os
import threading
import unicodedata
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .fonts import split_face

ATLAS_VERSION = 8
LUT_SIZE = 0x110000
MAX_ATLAS_BYTES = (1 << 31) - 1  # the kernels address the atlas with int32 offsets
_ARRAYS = ("data", "offset", "width", "height", "left", "top", "advance", "width_1000", "missing")
_CACHED = _ARRAYS + ("codepoints", "slots", "missing_cps", "clusters")
MISSING_SLOT = 0
SPACE_SLOT = 1
# Characters the layout treats as whitespace or removes: they never need a bitmap.
_NO_INK = {0x20, 0x09, 0x0A, 0x0D, 0xA0, 0xAD, 0x200B}


def poppler_font_scale(size_pt: float, dpi: float, h_scale: float = 1.0) -> tuple[int, int, int]:
    """(pixel size, FT matrix xx, yy in 16.16) of FreeType's glyph rendering, as poppler sets them up.

    poppler's font matrix for reportlab's text (`/F 9 Tf`, `1 0 0 1 x y Tm`, page CTM [k 0 0 -k ..], k = dpi / 72)
    is mat = [size * k, 0, 0, size * k] (SplashOutputDev::doUpdateFont, SplashFontEngine::getFont); the
    SplashFTFont constructor sets the face to the whole pixel size splashRound(splashDist(0, 0, mat[2], mat[3]))
    (FT_Set_Pixel_Sizes) and draws through the transform (FT_Fixed) (mat[i] / size) * 65536, truncated:
    9 pt at 100 dpi (12.5 px) is a 13 px face scaled by 12.5 / 13. `h_scale` (glyph_rt's own horizontal
    scale) multiplies xx."""
    k = dpi / 72.0
    m = size_pt * k  # the matrix's diagonal (its off-diagonal terms are 0 for upright text)
    px = max(1, int(math.floor(m + 0.5)))  # splashRound(splashDist(0, 0, mat[2], mat[3])): the diagonal's length
    return px, int(h_scale * (m / px) * 65536), int((m / px) * 65536)


POPPLER_MAX_FRACTIONAL_ROWS = 50  # SplashFont::getGlyph: fonts whose glyph box is taller draw at whole pixels


def poppler_glyph_rows(face, size_px: float) -> int:
    """The height of poppler's glyph box for `face` at `size_px` (SplashFont's glyphH): the font's bounding box
    through the font matrix, each corner truncated to an int as SplashFTFont's constructor does, plus 3 rows of
    padding (SplashFont::initCache). Above 50 rows, poppler draws the font's glyphs without sub-pixel x phases."""
    bb = face.bbox
    div = 65536 if bb.xMax > 20000 else 1
    ys = [int(-size_px * y / (div * face.units_per_EM)) for y in (bb.yMin, bb.yMax)]  # (int): toward zero
    lo, hi = min(ys), max(ys)
    if lo == hi:  # poppler's kludge for fonts with an empty bounding box
        lo, hi = 0, int(1.2 * size_px)
    return hi - lo + 3


def cache_dir() -> Path:
    return Path(os.environ.get("GLYPH_RT_CACHE") or Path.home() / ".cache" / "glyph_rt") / "atlas"


_pruned: set[Path] = set()


def prune_old_versions(d: Path) -> None:
    """Removes atlas files of earlier ATLAS_VERSIONs from `d` (once per directory and process; best effort):
    no version reads them again."""
    if d in _pruned:
        return
    _pruned.add(d)
    for f in d.glob("atlas-v*-*.npz"):
        v = f.name[len("atlas-v"):].split("-", 1)[0]
        if v.isdigit() and int(v) < ATLAS_VERSION:
            try:
                f.unlink()
            except OSError:
                pass


def _file_id(font: str) -> str:
    path, index = split_face(font)
    st = os.stat(path)
    return f"{os.path.abspath(path)}{f'#{index}' if index else ''}:{st.st_size}:{int(st.st_mtime)}"


class FontAtlas:
    # the most recently used atlases (~6 MB each on the host); training's style sampler brings a new one almost
    # every sample, so older ones go (a document keeps its own alive; the disk cache rebuilds one quickly)
    _memory: OrderedDict[str, "FontAtlas"] = OrderedDict()
    MEMORY_ATLASES = 32
    _lock = threading.Lock()

    @classmethod
    def get(cls, fonts: list[str], size_pt: float, dpi: float, h_scale: float = 1.0, phases: int = 4,
            key: str | None = None) -> "FontAtlas":
        """The cached atlas for this font configuration (built on first use); `key`: an atlas's own key."""
        key = key or cls.make_key(fonts, size_pt, dpi, h_scale, phases)
        with cls._lock:
            atlas = cls._memory.get(key)
            if atlas is None:
                atlas = cls(fonts, size_pt, dpi, h_scale, phases, key=key)
                cls._memory[key] = atlas
                while len(cls._memory) > cls.MEMORY_ATLASES:
                    cls._memory.popitem(last=False)
            else:
                cls._memory.move_to_end(key)
            return atlas

    @staticmethod
    def make_key(fonts, size_pt, dpi, h_scale, phases) -> str:
        ident = "|".join(_file_id(f) for f in fonts) + f"|{size_pt!r}|{dpi!r}|{h_scale!r}|{phases}|v{ATLAS_VERSION}"
        return hashlib.sha1(ident.encode()).hexdigest()[:20]

    def __init__(self, fonts: list[str], size_pt: float, dpi: float, h_scale: float = 1.0, phases: int = 4,
                 key: str | None = None):
        if not fonts:
            raise ValueError("FontAtlas: no fonts given")
        self.fonts = list(fonts)
        self.size_pt = float(size_pt)
        self.dpi = float(dpi)
        self.h_scale = float(h_scale)
        self.phases = int(phases)
        self.key = key or self.make_key(fonts, size_pt, dpi, h_scale, phases)
        self.size_px = self.size_pt * self.dpi / 72.0
        self.ft_pixels, self.ft_xx, self.ft_yy = poppler_font_scale(self.size_pt, self.dpi, self.h_scale)
        self.lock = threading.RLock()  # held while the atlas grows; layouts may run in several threads
        self._faces = [self._open_face(path, "font_path" if i == 0 else "fallback_fonts")
                       for i, path in enumerate(self.fonts)]
        # per font, whether poppler draws its glyphs at whole pixels only (every phase is phase 0's bitmap)
        self._whole_pixels = [poppler_glyph_rows(f, self.size_px) > POPPLER_MAX_FRACTIONAL_ROWS for f in self._faces]
        self.lut = np.full(LUT_SIZE, -1, dtype=np.int32)
        self._advance: list[float] = []
        self._width_1000: list[float] = []
        self._missing: list[int] = []
        self._bitmaps: list[np.ndarray] = []  # slots * phases entries
        self._meta: list[tuple[int, int, int, int]] = []  # (w, h, left, top)
        self._by_glyph: dict[tuple[int, int], int] = {}
        self._clusters: dict[str, int] = {}  # shaped glyph cluster key -> slot
        self.missing_codepoints: set[int] = set()
        self._arrays = None
        self._nbytes = 0  # bytes of all bitmaps
        self._dirty = False
        if not self._load_disk():
            self._add_missing_box()
            self._add_codepoint(0x20, force_slot=SPACE_SLOT)
            self._dirty = True

    def _open_face(self, path: str, field_name: str):
        """The FreeType face of `path` at the atlas's pixel size, or the config's error naming the field: a file
        FreeType cannot open, or a font it cannot draw at any size (a bitmap-only font: EBLC/EBDT strikes and no
        outlines; the atlas renders outlines only, as poppler draws Glyph's TrueType fonts)."""
        import freetype

        from .config import ConfigError

        try:
            face = freetype.Face(*split_face(path))
        except Exception as e:  # freetype.ft_errors.FT_Exception and OSError
            raise ConfigError(f"{field_name}: {path!r} cannot be opened as a font: {e}") from None
        if not face.is_scalable or face.units_per_EM <= 0:
            raise ConfigError(f"{field_name}: {path!r} cannot be used as a font: it has no scalable outlines "
                              "(a bitmap-only font); give a TrueType/OpenType outline font")
        try:
            face.set_pixel_sizes(0, self.ft_pixels)
        except Exception as e:  # freetype.ft_errors.FT_Exception
            raise ConfigError(f"{field_name}: {path!r} cannot be used as a font at {self.ft_pixels} px: {e}") from None
        return face

    # ----------------------------------------------------------------- building
    @property
    def num_slots(self) -> int:
        return len(self._advance)

    def _render(self, face_idx: int, gid: int) -> list[tuple[np.ndarray, tuple[int, int, int, int]]]:
        import freetype

        face = self._faces[face_idx]
        flags = freetype.FT_LOAD_RENDER | freetype.FT_LOAD_NO_HINTING | freetype.FT_LOAD_NO_BITMAP
        out = []
        for ph in range(1 if self._whole_pixels[face_idx] else self.phases):
            m = freetype.Matrix(self.ft_xx, 0, 0, self.ft_yy)
            face.set_transform(m, freetype.Vector(int(round(ph * 64 / self.phases)), 0))
            face.load_glyph(gid, flags)
            g = face.glyph
            bm = g.bitmap
            if bm.rows and bm.width:  # straight from FreeType's buffer (freetype-py's .buffer is a list)
                raw = ctypes.string_at(bm._FT_Bitmap.buffer, bm.rows * abs(bm.pitch))
                a = np.frombuffer(raw, np.uint8).reshape(bm.rows, abs(bm.pitch))[:, : bm.width].copy()
                if bm.pitch < 0:
                    a = a[::-1].copy()
            else:
                a = np.zeros((0, 0), dtype=np.uint8)
            out.append((a, (a.shape[1], a.shape[0], g.bitmap_left, g.bitmap_top)))
        return out * (self.phases // len(out))

    def _add_missing_box(self) -> None:
        """Slot 0, for characters that no font covers: the first font's missing glyph (glyph 0, .notdef), as Glyph
        draws them: reportlab lays it out at glyph 0's advance (TTFont.defaultWidth, from hmtx) and its PDF subset
        maps the character to glyph 0, which poppler draws (DejaVu Sans: a box 1229/2048 em wide)."""
        import freetype

        assert self.num_slots == MISSING_SLOT
        face = self._faces[0]
        adv_units = face.get_advance(0, freetype.FT_LOAD_NO_SCALE)
        rendered = self._render(0, 0)
        self._advance.append(adv_units * self.size_pt / face.units_per_EM)
        self._width_1000.append(adv_units * (1000 / face.units_per_EM))  # reportlab's TTFont.defaultWidth
        self._missing.append(1)
        for a, meta in rendered:
            self._bitmaps.append(a)
            self._meta.append(meta)
        self._nbytes += sum(a.size for a, _ in rendered)

    def _add_codepoint(self, cp: int, force_slot: int | None = None) -> None:
        face_idx, gid = -1, 0
        if not (unicodedata.category(chr(cp)) in ("Cc", "Cs", "Co", "Cn") and cp not in _NO_INK):
            for i, face in enumerate(self._faces):
                gid = face.get_char_index(cp)
                if gid:
                    face_idx = i
                    break
        if face_idx < 0 and cp == 0x20:
            raise ValueError(f"font {self.fonts[0]!r} has no space character")
        if face_idx < 0:
            self.lut[cp] = MISSING_SLOT
            self.missing_codepoints.add(cp)
            return
        slot = self._by_glyph.get((face_idx, gid))
        if slot is None:
            slot = self.num_slots
            if force_slot is not None:
                assert slot == force_slot
            import freetype

            face = self._faces[face_idx]
            adv_units = face.get_advance(gid, freetype.FT_LOAD_NO_SCALE)
            if cp in _NO_INK:
                empty = np.zeros((0, 0), dtype=np.uint8)
                rendered = [(empty, (0, 0, 0, 0))] * self.phases
            else:
                rendered = self._render(face_idx, gid)
            added = sum(a.size for a, _ in rendered)
            if self._nbytes + added > MAX_ATLAS_BYTES:
                raise MemoryError(
                    f"glyph atlas: U+{cp:04X} would grow the atlas of font_size {self.size_pt:g} pt at "
                    f"{self.dpi:g} dpi with {self.phases} sub-pixel phases to {(self._nbytes + added) / 2**30:.2f} GiB, over the "
                    f"{MAX_ATLAS_BYTES / 2**30:.0f} GiB limit; lower font_size, dpi or subpixel_phases, or render "
                    "texts with fewer distinct characters")
            self._nbytes += added
            self._advance.append(adv_units * self.size_pt / face.units_per_EM)
            self._width_1000.append(adv_units * (1000 / face.units_per_EM))  # reportlab's TTFont widths
            self._missing.append(0)
            for a, meta in rendered:
                self._bitmaps.append(a)
                self._meta.append(meta)
            self._by_glyph[(face_idx, gid)] = slot
        self.lut[cp] = slot

    def _render_at(self, face_idx: int, gid: int, dx64: int, dy64: int) -> tuple[np.ndarray, int, int]:
        """Coverage bitmap of one glyph whose origin is shifted by (dx64, dy64) 1/64 px (y up): (a, left, top)."""
        import freetype

        face = self._faces[face_idx]
        face.set_transform(freetype.Matrix(self.ft_xx, 0, 0, self.ft_yy), freetype.Vector(dx64, dy64))
        face.load_glyph(gid, freetype.FT_LOAD_RENDER | freetype.FT_LOAD_NO_HINTING | freetype.FT_LOAD_NO_BITMAP)
        g = face.glyph
        bm = g.bitmap
        if not (bm.rows and bm.width):
            return np.zeros((0, 0), np.uint8), 0, 0
        raw = ctypes.string_at(bm._FT_Bitmap.buffer, bm.rows * abs(bm.pitch))
        a = np.frombuffer(raw, np.uint8).reshape(bm.rows, abs(bm.pitch))[:, : bm.width].copy()
        return (a[::-1].copy() if bm.pitch < 0 else a), g.bitmap_left, g.bitmap_top

    def cluster_slot(self, face_idx: int, glyphs) -> int:
        """The slot of a shaped glyph cluster of face `face_idx`: glyphs as (glyph id, x advance, x offset,
        y offset) in font units, drawn from the cluster's pen position. Its advance is the sum of the
        glyphs' advances; its bitmaps composite the glyphs at each sub-pixel phase. An empty cluster is
        a zero-width slot with no ink (characters merged into the cluster before them)."""
        key = cluster_key(face_idx, glyphs)
        with self.lock:
            slot = self._clusters.get(key)
            if slot is not None:
                return slot
            face = self._faces[face_idx]
            upem = face.units_per_EM
            sx, sy = self.size_px * self.h_scale / upem, self.size_px / upem
            rendered, added = [], 0
            for ph in range(self.phases):
                parts, pen = [], 0
                for gid, xa, xo, yo in glyphs:
                    x = (pen + xo) * sx + ph / self.phases
                    y = yo * sy
                    ix, iy = math.floor(x), math.floor(y)
                    a, left, top = self._render_at(face_idx, gid, int(round((x - ix) * 64)), int(round((y - iy) * 64)))
                    if a.size:
                        parts.append((a, ix + left, top + iy))
                    pen += xa
                if not parts:
                    rendered.append((np.zeros((0, 0), np.uint8), (0, 0, 0, 0)))
                    continue
                x0 = min(px for _, px, _ in parts)
                x1 = max(px + a.shape[1] for a, px, _ in parts)
                top = max(t for _, _, t in parts)
                bottom = min(t - a.shape[0] for a, _, t in parts)
                acc = np.zeros((top - bottom, x1 - x0), np.float64)
                for a, px, t in parts:  # coverage of glyphs drawn one over the other
                    r = acc[top - t: top - t + a.shape[0], px - x0: px - x0 + a.shape[1]]
                    r += a * (1.0 - r / 255.0)
                comp = np.minimum(255, np.floor(acc + 0.5)).astype(np.uint8)
                rendered.append((comp, (comp.shape[1], comp.shape[0], x0, top)))
                added += comp.size
            if self._nbytes + added > MAX_ATLAS_BYTES:
                raise MemoryError(f"glyph atlas: a shaped cluster would grow the atlas of font_size {self.size_pt:g} pt "
                                  f"at {self.dpi:g} dpi past {MAX_ATLAS_BYTES / 2**30:.0f} GiB; lower font_size or dpi")
            slot = self.num_slots
            self._nbytes += added
            self._advance.append(sum(g[1] for g in glyphs) * self.size_pt / upem)
            self._width_1000.append(sum(g[1] for g in glyphs) * (1000 / upem))
            self._missing.append(0)
            for a, meta in rendered:
                self._bitmaps.append(a)
                self._meta.append(meta)
            self._clusters[key] = slot
            self._arrays = None
            self._dirty = True
            return slot

    def ensure(self, codepoints) -> int:
        """Adds the given codepoints (and the chars they need); returns how many were new."""
        new = 0
        with self.lock:
            try:
                for cp in np.asarray(codepoints, dtype=np.int64).tolist():
                    if cp < 0 or cp >= LUT_SIZE:
                        continue
                    if self.lut[cp] < 0:
                        if cp == 0xA0:  # reportlab draws a no-break space with the space's glyph
                            self.lut[cp] = SPACE_SLOT
                        else:
                            self._add_codepoint(cp)
                        new += 1
            finally:  # also when a glyph failed: what was added before it is in the next snapshot
                if new:
                    self._arrays = None
                    self._dirty = True
        return new

    # ----------------------------------------------------------------- flat arrays
    def arrays(self) -> dict[str, np.ndarray]:
        """The atlas as flat arrays (rebuilt only after it grew): a snapshot that later growth leaves as it is."""
        with self.lock:
            return self._arrays or self._build_arrays()

    def _build_arrays(self) -> dict[str, np.ndarray]:
        sizes = [b.size for b in self._bitmaps]
        offset = np.zeros(len(sizes), dtype=np.int64)
        if sizes:
            offset[1:] = np.cumsum(sizes[:-1])
        data = np.concatenate([b.reshape(-1) for b in self._bitmaps]) if self._bitmaps else np.zeros(0, np.uint8)
        meta = np.asarray(self._meta, dtype=np.int32).reshape(-1, 4)
        self._arrays = {
            "data": np.ascontiguousarray(data, dtype=np.uint8),
            "offset": offset,
            "width": np.ascontiguousarray(meta[:, 0]),
            "height": np.ascontiguousarray(meta[:, 1]),
            "left": np.ascontiguousarray(meta[:, 2]),
            "top": np.ascontiguousarray(meta[:, 3]),
            "advance": np.asarray(self._advance, dtype=np.float64),
            "width_1000": np.asarray(self._width_1000, dtype=np.float64),
            "missing": np.asarray(self._missing, dtype=np.uint8),
        }
        return self._arrays

    def bitmap(self, slot: int, phase: int = 0) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        i = slot * self.phases + phase
        with self.lock:
            return self._bitmaps[i], self._meta[i]

    # ----------------------------------------------------------------- disk cache
    def _path(self) -> Path:
        return cache_dir() / f"atlas-v{ATLAS_VERSION}-{self.key}.npz"

    def save(self) -> None:
        """Writes the atlas to the disk cache if it grew (best effort: a read-only home is fine)."""
        with self.lock:
            if not self._dirty:
                return
            cps = np.nonzero(self.lut >= 0)[0].astype(np.int32)
            z = {**self.arrays(), "codepoints": cps, "slots": self.lut[cps],
                 "missing_cps": np.asarray(sorted(self.missing_codepoints), np.int32),
                 "clusters": np.frombuffer(json.dumps(self._clusters).encode(), np.uint8)}
            try:
                p = self._path()
                p.parent.mkdir(parents=True, exist_ok=True)
                prune_old_versions(p.parent)
                tmp = p.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp.npz")
                np.savez(tmp, checksum=np.frombuffer(_checksum(z), np.uint8), **z)
                os.replace(tmp, p)
                self._dirty = False
            except OSError:
                pass

    def _load_disk(self) -> bool:
        """Reads the disk cache; False (and a clean atlas) when it is absent, stale or fails verification."""
        p = self._path()
        if not p.is_file():
            return False
        try:
            with np.load(p, allow_pickle=False) as f:
                z = {k: f[k] for k in _CACHED}
                checksum = f["checksum"].tobytes()
            if checksum != _checksum(z):
                raise ValueError("checksum mismatch")
            _verify(z, self.phases)
            data, offset = z["data"], z["offset"]
            meta = np.stack([z["width"], z["height"], z["left"], z["top"]], axis=1)
            self._bitmaps = [
                data[o : o + w * h].reshape(h, w) for o, (w, h, _, _) in zip(offset.tolist(), meta.tolist())
            ]
            self._meta = [tuple(m) for m in meta.tolist()]
            self._advance = z["advance"].tolist()
            self._width_1000 = z["width_1000"].tolist()
            self._missing = z["missing"].tolist()
            self.lut[z["codepoints"]] = z["slots"]
            self.missing_codepoints = set(z["missing_cps"].tolist())
            clusters = json.loads(z["clusters"].tobytes())
            if not isinstance(clusters, dict) or not all(isinstance(v, int) and 1 < v < len(self._advance)
                                                         for v in clusters.values()):
                raise ValueError("cluster slots")
            self._clusters = clusters
            self._nbytes = int(data.size)
        except Exception:  # a corrupt, truncated or stale cache file is rebuilt
            self.lut[:] = -1
            self._bitmaps, self._meta, self._advance, self._width_1000, self._missing = [], [], [], [], []
            self.missing_codepoints = set()
            self._clusters = {}
            self._nbytes = 0
            return False
        # glyph identity is not cached: later glyphs get their own slots, which is correct
        return True


def cluster_key(face_idx: int, glyphs) -> str:
    """The key of a shaped cluster in an atlas (and its cache file): "face:gid,x_advance,x_offset,y_offset;..."."""
    return f"{face_idx}:" + ";".join(",".join(map(str, g)) for g in glyphs)


def cluster_glyphs(key: str) -> tuple[int, list[tuple[int, ...]]]:
    """(face index, glyphs) of a cluster key: the arguments of `FontAtlas.cluster_slot` that made it."""
    face, glyphs = key.split(":", 1)
    return int(face), [tuple(map(int, g.split(","))) for g in glyphs.split(";")] if glyphs else []


def _checksum(z: dict[str, np.ndarray]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for k in _CACHED:
        a = np.ascontiguousarray(z[k])
        h.update(f"{k}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.data)
    return h.digest()


def _verify(z: dict[str, np.ndarray], phases: int) -> None:
    """Raises ValueError unless the cached arrays are consistent: sizes, dtypes and index ranges."""
    dtypes = {"data": np.uint8, "offset": np.int64, "width": np.int32, "height": np.int32, "left": np.int32,
              "top": np.int32, "advance": np.float64, "width_1000": np.float64, "missing": np.uint8, "codepoints": np.int32,
              "slots": np.int32, "missing_cps": np.int32, "clusters": np.uint8}
    for k, t in dtypes.items():
        if z[k].dtype != t or z[k].ndim != 1:
            raise ValueError(f"{k}: dtype or shape")
    slots = len(z["advance"])
    n = slots * phases
    sizes = [len(z[k]) for k in ("offset", "width", "height", "left", "top")]
    if slots < 2 or len(z["missing"]) != slots or len(z["width_1000"]) != slots or any(m != n for m in sizes):
        raise ValueError("array sizes")
    w, h, off = z["width"].astype(np.int64), z["height"].astype(np.int64), z["offset"]
    if (w < 0).any() or (h < 0).any() or (off < 0).any() or (off + w * h > len(z["data"])).any():
        raise ValueError("bitmap out of range")
    if not (np.isfinite(z["advance"]).all() and np.isfinite(z["width_1000"]).all()) or (z["missing"] > 1).any():
        raise ValueError("advance or missing flags")
    cps, sl, mcps = z["codepoints"], z["slots"], z["missing_cps"]
    if len(sl) != len(cps) or ((cps < 0) | (cps >= LUT_SIZE)).any() or ((sl < 0) | (sl >= slots)).any():
        raise ValueError("codepoint or slot out of range")
    if ((mcps < 0) | (mcps >= LUT_SIZE)).any():
        raise ValueError("missing codepoint out of range")
