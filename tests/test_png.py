"""PNG writing: files decode to exactly the rendered pages; greyscale only where every pixel is grey."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from glyph_rt.render.config import RenderConfig
from glyph_rt.render.pages import Document, render
from glyph_rt.render.png import encode_png, summary_json, write_atomic

TEXT = "Glyph renders long text into pages.\n" * 400


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (37, 53), (37, 53, 3), (840, 588, 3)])
def test_encode_decodes_to_the_same_pixels(shape):
    a = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    assert np.array_equal(decode(encode_png(a)), a)
    canvas = np.zeros((50, 70, 3), np.uint8)
    canvas[:] = np.random.default_rng(1).integers(0, 256, canvas.shape, dtype=np.uint8)
    view = canvas[3:40, 5:60]  # a page is a strided view of its canvas
    assert np.array_equal(decode(encode_png(view)), view)
    assert np.array_equal(decode(encode_png(view[..., 0])), view[..., 0])


def test_encode_rejects_what_png_cannot_hold():
    for bad in (np.zeros((0, 4), np.uint8), np.zeros((4, 4), np.int32), np.zeros((4, 4, 2), np.uint8)):
        with pytest.raises(ValueError, match="encode_png"):
            encode_png(bad)


@pytest.mark.parametrize("config, grey", [(RenderConfig(), True), (RenderConfig.preset("dark_mode"), None),
                                          (RenderConfig(font_color="#FF0000"), False)])
def test_saved_pages_equal_the_rendered_ones(tmp_path, config, grey):
    pages = render(TEXT, config)
    if grey is not None:
        assert pages.document.grey == grey
    paths = pages.save(tmp_path, tokenizer=None)
    for i, p in enumerate(paths):
        img = Image.open(p)
        assert img.mode == ("L" if pages.document.grey else "RGB")
        assert np.array_equal(np.asarray(img.convert("RGB")), pages[i].numpy())
    assert not list(tmp_path.glob(".*"))  # no temporary files left


def test_every_zlib_level_saves_and_others_are_refused_before_any_page(tmp_path):
    """ISA-L's deflate has levels 0-3; zlib's 4-9 used to fail after the pages were drawn, with ISA-L's own error."""

    pages = render("hello " * 10)
    for level in (0, 3, 6, 9):
        (path,) = pages.save(tmp_path / str(level), compress_level=level)
        assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), pages.images[0].numpy())
    for level in (-1, 10, 2.5, True):
        with pytest.raises(ValueError, match="compress_level: .* must be a whole number 0-9"):
            pages.save(tmp_path / "bad", compress_level=level)
        assert not (tmp_path / "bad").exists()  # refused before the directory is made


def test_save_refuses_an_empty_or_file_out_dir_as_the_cli_does(tmp_path, monkeypatch):
    """save("") wrote into (and cleared the pages of) the working directory; save(a file) was a bare FileExistsError."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "page_001.png").write_bytes(b"someone's page")
    pages = render("hello")
    with pytest.raises(ValueError, match="out_dir is empty; give a directory"):
        pages.save("")
    assert (tmp_path / "page_001.png").read_bytes() == b"someone's page"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="out_dir 'afile' is a file; give a directory"):
        pages.save("afile")
    with pytest.raises(ValueError, match="a parent of it is a file"):
        pages.save(tmp_path / "afile" / "sub")


def test_grey_is_decided_by_the_palette():
    assert Document("x", RenderConfig(para_bg_color="#EEEEEE", para_border_color="#333333")).grey
    assert not Document("x", RenderConfig(para_bg_color="#EEEEEF")).grey
    assert not Document("x", RenderConfig(newline_markup='<font color="#FF0000">\\n</font>')).grey


def test_a_lone_surrogate_still_gives_a_full_summary(tmp_path):
    pages = render("text with a lone surrogate \ud800 in it", RenderConfig())
    pages.save(tmp_path, tokenizer=None)
    s = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    assert s["pages"] == 1 and s["missing_glyphs"]["chars"] == {"\ud800": 1}
    assert json.loads(summary_json({"a": "\udc80"})) == {"a": "\udc80"}


def test_summary_results_and_batch_lines_share_one_surrogate_safe_writer(tmp_path):
    """fileio.json_text: other text stays UTF-8 as is, only a lone surrogate is escaped; summary.json, eval's
    items and rows, and batch result lines all read back the same strings."""
    from glyph_rt.eval import Item, load_items, save_items
    from glyph_rt.fileio import json_line
    from glyph_rt.serve.batch import _line

    value = {"a": "\udc80 caf\u00e9 \u2028 \U0001f600"}
    data = summary_json(value)
    assert "caf\u00e9".encode() in data and b"\\udc80" in data and json.loads(data) == value
    assert data.decode("utf-8").startswith("{\n  ")  # indented, as before
    assert json.loads(json_line(value)) == value and json_line(value).count("\n") == 1
    rec = json.loads(_line("id-\ud800", 200, value).decode("utf-8"))
    assert rec["custom_id"] == "id-\ud800" and rec["response"]["body"] == value
    it = Item(id="q\ud800", context="c\udc80", question="q", answers=["\u00e9"])
    save_items([it], tmp_path / "items.jsonl")
    assert load_items(tmp_path / "items.jsonl") == [it]


def test_write_atomic_leaves_the_old_file_on_failure(tmp_path):
    p = tmp_path / "f.bin"
    write_atomic(p, b"old")

    with pytest.raises(TypeError):
        write_atomic(p, object())  # the write fails after the temporary file was opened
    assert p.read_bytes() == b"old" and sorted(x.name for x in tmp_path.iterdir()) == ["f.bin"]
