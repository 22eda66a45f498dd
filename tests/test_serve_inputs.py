"""The server's request inputs (glyph_rt.serve.inputs) on a tiny random-weight GLM-4.1V checkpoint: images with
transparency, the request's page budget, file:// URLs under --allowed-media-dir."""
import base64
import inspect
import io
import os
import threading
import time
import tracemalloc
from urllib.request import pathname2url

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from glyph_rt.render import gpu
from glyph_rt import RenderConfig
from glyph_rt.models import GlyphModel
from glyph_rt.render.textio import sample_text
from glyph_rt.serve.inputs import InputOptions, RequestError, _decode_image, _open_below, build_prompt

from conftest import EXACT

CFG = RenderConfig(page_size=(120, 90))
TEXT = sample_text()


@pytest.fixture(scope="module")
def gm(ckpt):
    return GlyphModel.from_pretrained(ckpt, render_config=CFG, **EXACT)


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def data_url(raw: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(raw).decode()


def image_message(url: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": "What does it say?"}]}]


def pixel_values(gm, url: str, opts: InputOptions | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    p = build_prompt(gm, image_message(url), opts or InputOptions(CFG, "tiny"))
    (seg,) = p.segments
    return seg.pixel_values.cpu(), seg.grids


def text_on(mode: str) -> Image.Image:
    """Black text on a transparent background (or on black, for RGB: what a plain convert("RGB") made of it)."""
    im = Image.new("RGBA", (112, 84), (0, 0, 0, 0))
    ImageDraw.Draw(im).text((5, 30), "Hello world", fill=(0, 0, 0, 255))
    if mode == "RGBA":
        return im
    if mode == "LA":
        return im.convert("LA")
    if mode == "P":  # a palette of black twice, its entry 0 transparent (tRNS): the background
        out = Image.fromarray((np.asarray(im)[..., 3] > 127).astype(np.uint8), "P")
        out.putpalette([0, 0, 0, 0, 0, 0])
        out.info["transparency"] = 0
        return out
    return im.convert("RGB")


# --- images with transparency: painted onto white, as the checkpoint's processor does

@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "RGB"])
def test_image_pixel_values_are_the_checkpoints_processors(gm, ckpt, mode):
    from transformers import AutoImageProcessor
    from transformers.image_transforms import convert_to_rgb

    raw = png_bytes(text_on(mode))
    with Image.open(io.BytesIO(raw)) as im:
        assert im.mode == mode and (mode == "RGB" or "A" in im.getbands() or "transparency" in im.info)
        kw = {"return_numpy": True} if "return_numpy" in inspect.signature(convert_to_rgb).parameters else {}
        want = np.asarray(convert_to_rgb(im, **kw))
    pv, grid = pixel_values(gm, data_url(raw))
    ref = AutoImageProcessor.from_pretrained(ckpt)(images=[Image.open(io.BytesIO(raw))], return_tensors="pt")
    assert grid.tolist() == ref["image_grid_thw"].tolist()
    torch.testing.assert_close(pv, ref["pixel_values"].to(pv.dtype), atol=1e-5, rtol=0)
    # and the page itself: the transparent background is white, the text dark
    got = _decode_image(raw, "p").numpy()
    assert np.array_equal(got, want)
    if mode != "RGB":
        assert got[0, 0].tolist() == [255, 255, 255] and got.min() < 64


# --- the request's page budget: counted while rendering, the rest never rendered

@pytest.fixture
def rendered(monkeypatch):
    """Pages that glyph_rt.render.gpu.render_inputs drew, call by call."""
    calls: list[int] = []
    orig = gpu.render_inputs

    def spy(*a, **k):
        r = orig(*a, **k)
        calls.append(int(r.image_grid_thw.shape[0]))
        return r

    monkeypatch.setattr(gpu, "render_inputs", spy)
    return calls


def glyph_parts(n: int, chars: int) -> list[dict]:
    return [{"type": "glyph", "glyph": {"text": TEXT[i * chars:(i + 1) * chars]}} for i in range(n)]


def test_page_budget_refuses_before_rendering_the_rest(gm, rendered):
    opts = InputOptions(CFG, "tiny", max_pages=8)
    t = time.perf_counter()
    with pytest.raises(RequestError, match=r"renders to more than 8 pages, over this server's limit of 8") as e:
        build_prompt(gm, [{"role": "user", "content": glyph_parts(40, 200)}], opts)  # 3 pages each: 120 in all
    assert e.value.status == 400 and e.value.code == "context_length_exceeded"
    assert sum(rendered) <= opts.max_pages + 1 and len(rendered) <= 4, rendered
    assert time.perf_counter() - t < 30
    rendered.clear()
    with pytest.raises(RequestError, match="more than 8 pages") as e:  # one long text: cut at the limit + 1
        build_prompt(gm, [{"role": "user", "content": [{"type": "glyph", "glyph": {"text": TEXT[:20000]}}]}], opts)
    assert rendered == [opts.max_pages + 1]


def test_page_budget_exact_count_and_within_the_limit(gm, rendered):
    texts = [TEXT[:200], TEXT[200:400], TEXT[400:600]]  # 3 pages each
    msg = [{"role": "user", "content": [{"type": "glyph", "glyph": {"text": t}} for t in texts]}]
    with pytest.raises(RequestError, match=r"renders to 9 pages, over this server's limit of 8"):
        build_prompt(gm, msg, InputOptions(CFG, "tiny", max_pages=8))  # the last text, whole, passes it
    rendered.clear()
    p = build_prompt(gm, msg, InputOptions(CFG, "tiny", max_pages=9))
    assert p.pages == 9 and rendered == [3, 3, 3]
    # one text at a time gives the pages a batch of all of them gives
    ref = gpu.render_inputs(texts, CFG, model=gm.vision, device=gm.device, dtype=torch.float32)
    assert torch.equal(torch.cat([s.grids for s in p.segments]), ref.image_grid_thw.cpu())
    assert torch.equal(torch.cat([s.pixel_values for s in p.segments]).cpu(), ref.pixel_values.cpu())


def test_page_budget_counts_images_before_reading_them(gm):
    url = data_url(png_bytes(Image.new("RGB", (56, 56), "white")))
    parts = [{"type": "image_url", "image_url": {"url": u}} for u in (url, url, "data:image/png;base64,!!")]
    with pytest.raises(RequestError, match="more than 2 pages, over this server's limit of 2") as e:
        build_prompt(gm, [{"role": "user", "content": parts}], InputOptions(CFG, "tiny", max_pages=2))
    assert e.value.code == "context_length_exceeded"  # the third image (invalid base64) is never read
    parts = [{"type": "image_url", "image_url": {"url": url}}, *glyph_parts(1, 200)]
    with pytest.raises(RequestError, match="renders to 4 pages, over this server.s limit of 3"):
        build_prompt(gm, [{"role": "user", "content": parts}], InputOptions(CFG, "tiny", max_pages=3))
    assert build_prompt(gm, [{"role": "user", "content": parts}], InputOptions(CFG, "tiny", max_pages=4)).pages == 4


def full_page_tokens(gm, cfg: RenderConfig) -> int:
    """Visual tokens of a page of `cfg` rendered with crops off: a full page."""
    off = RenderConfig.from_dict({**cfg.to_dict(), "auto_crop_width": False, "auto_crop_last_page": False})
    (tokens,) = set(gpu.render_inputs(TEXT[:600], off, model=gm.vision, device="cpu").image_grid_thw.prod(1).tolist())
    return tokens // 4


def test_visual_token_budget_bounds_the_pages_a_text_renders(gm, monkeypatch):
    """A text is rendered with at most the full pages the visual tokens left can hold (+ 1): a request over them is
    refused after that many pages, not after every page up to the page limit."""
    full = RenderConfig.from_dict({**CFG.to_dict(), "auto_crop_width": False})  # pages at their full width
    per_page = full_page_tokens(gm, full)
    calls: list[tuple[int, int]] = []  # (max_pages given, pages rendered)
    orig = gpu.render_inputs

    def spy(*a, **k):
        r = orig(*a, **k)
        calls.append((k["max_pages"], int(r.image_grid_thw.shape[0])))
        return r

    monkeypatch.setattr(gpu, "render_inputs", spy)
    opts = InputOptions(full, "tiny")
    msg = [{"role": "user", "content": [{"type": "glyph", "glyph": {"text": TEXT[:3000]}}]}]  # 30 pages and more
    for budget in (per_page - 1, 3 * per_page + per_page // 2):  # the first page alone passes it; three pages fit
        calls.clear()
        with pytest.raises(RequestError, match=r"visual tokens or more .* over the \d+ positions its prompt may take") \
                as e:
            build_prompt(gm, msg, opts, max_prompt_tokens=budget)
        assert e.value.code == "context_length_exceeded"
        assert calls == [(budget // per_page + 1, budget // per_page + 1)], calls
    # within the budget: every page, rendered once
    calls.clear()
    p = build_prompt(gm, [{"role": "user", "content": glyph_parts(1, 200)}], opts, max_prompt_tokens=10 * per_page)
    assert len(calls) == 1 and p.pages == calls[0][1] < calls[0][0] and p.visual_tokens <= 10 * per_page


def test_cropped_pages_the_budget_holds_are_rendered(gm, rendered):
    """Cropped pages take fewer tokens than full ones: a text cut at the full pages' bound whose pages still fit is
    rendered again with the pages its smallest one says the budget holds, not refused."""
    per_page = full_page_tokens(gm, CFG)
    msg = [{"role": "user", "content": [{"type": "glyph", "glyph": {"text": "a\n" * 80}}]}]  # narrow pages
    whole = build_prompt(gm, msg, InputOptions(CFG, "tiny"))
    budget = whole.visual_tokens
    assert budget < (whole.pages - 2) * per_page  # the full pages' bound cuts it
    rendered.clear()
    p = build_prompt(gm, msg, InputOptions(CFG, "tiny"), max_prompt_tokens=budget)
    assert p.pages == whole.pages and p.input_ids == whole.input_ids
    assert rendered == [budget // per_page + 1, whole.pages], rendered
    rendered.clear()
    with pytest.raises(RequestError, match="visual tokens or more"):  # one token short
        build_prompt(gm, msg, InputOptions(CFG, "tiny"), max_prompt_tokens=budget - 1)
    assert rendered[0] == (budget - 1) // per_page + 1 and len(rendered) <= 3, rendered


# --- the model's window: visual tokens counted from each image's header, before any image is decoded

@pytest.fixture
def decoded(monkeypatch):
    """The params of the images that glyph_rt.serve.inputs decoded."""
    from glyph_rt.serve import inputs

    calls: list[str] = []
    orig = inputs._decode_image

    def spy(raw, param):
        calls.append(param)
        return orig(raw, param)

    monkeypatch.setattr(inputs, "_decode_image", spy)
    return calls


def test_visual_tokens_refused_before_any_image_is_decoded(gm, decoded):
    url = data_url(png_bytes(Image.new("RGB", (560, 560), "white")))  # 40x40 patches: 400 visual tokens
    two = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}] * 2}]
    opts = InputOptions(CFG, "tiny")
    with pytest.raises(RequestError, match=r"need 800 visual tokens or more \(pages counted: 2, an image is one\), "
                                           r"over the 799 positions") as e:
        build_prompt(gm, two, opts, max_prompt_tokens=799)
    assert e.value.status == 400 and e.value.code == "context_length_exceeded" and decoded == []
    p = build_prompt(gm, two, opts, max_prompt_tokens=800)
    assert p.visual_tokens == 800 and len(decoded) == 2
    # a rendered text's pages count too, and come first: the image after them is never decoded
    decoded.clear()
    parts = [*glyph_parts(1, 200), {"type": "image_url", "image_url": {"url": url}}]
    text_tokens = build_prompt(gm, [{"role": "user", "content": parts[:1]}], opts).visual_tokens
    with pytest.raises(RequestError, match=f"need {text_tokens + 400} visual tokens or more"):
        build_prompt(gm, [{"role": "user", "content": parts}], opts, max_prompt_tokens=text_tokens + 399)
    assert decoded == []


def test_service_refuses_images_past_the_window_before_decoding(gm, decoded):
    """ChatService.prepare gives build_prompt the model's context less max_tokens (less 1 when not given)."""
    from glyph_rt.serve.engine import Engine
    from glyph_rt.serve.protocol import parse_request
    from glyph_rt.serve.service import ChatService

    url = data_url(png_bytes(Image.new("RGB", (560, 560), "white")))
    svc = ChatService(Engine(gm).start(), InputOptions(CFG, "tiny"), 16)
    try:
        window = svc.max_positions
        body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}] * 2}]}
        with pytest.raises(RequestError, match="over the 700 positions") as e:
            svc.prepare(parse_request({**body, "max_tokens": window - 700}))
        assert e.value.code == "context_length_exceeded" and decoded == []
        many = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]
                              * (window // 400 + 1)}]}
        with pytest.raises(RequestError, match=f"over the {window - 1} positions"):
            svc.prepare(parse_request(many))
        assert decoded == []
        prompt, params = svc.prepare(parse_request(body))
        assert prompt.visual_tokens == 800 and len(decoded) == 2
    finally:
        svc.shutdown()


def test_out_of_gpu_memory_while_preparing_is_the_requests_error(gm, monkeypatch):
    """torch.cuda.OutOfMemoryError while a request's pages are made: that request's 503, and the server goes on."""
    import httpx

    from glyph_rt.ops import pixel_values as pv_module
    from glyph_rt.serve.app import ServerThread, build_app
    from glyph_rt.serve.engine import Engine
    from glyph_rt.serve.service import ChatService

    url = data_url(png_bytes(Image.new("RGB", (56, 56), "white")))
    orig = pv_module.pixel_values_from_pages

    def out_of_memory(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    svc = ChatService(Engine(gm).start(), InputOptions(CFG, "tiny"), 4)
    try:
        with ServerThread(build_app(svc)) as s:
            monkeypatch.setattr(pv_module, "pixel_values_from_pages", out_of_memory)
            body = {"messages": image_message(url), "max_tokens": 2}
            r = httpx.post(s.url + "/v1/chat/completions", json=body, timeout=60)
            assert r.status_code == 503, r.text
            err = r.json()["error"]
            assert err["code"] == "out_of_memory" and err["type"] == "service_unavailable"
            assert "ran out of memory" in err["message"]
            monkeypatch.setattr(pv_module, "pixel_values_from_pages", orig)
            r = httpx.post(s.url + "/v1/chat/completions", json=body, timeout=60)
            assert r.status_code == 200 and svc.healthy
    finally:
        svc.shutdown()


# --- file:// URLs under --allowed-media-dir

@pytest.fixture
def media(tmp_path):
    root = tmp_path / "media"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    return root


def file_url(path) -> str:
    return "file://" + pathname2url(str(path))


def media_opts(root, **kw) -> InputOptions:
    return InputOptions(CFG, "tiny", allowed_media_dir=str(root), **kw)


def test_file_url_is_percent_decoded(gm, media):
    raw = png_bytes(text_on("RGB"))
    (media / "a b.png").write_bytes(raw)
    url = file_url(media / "a b.png")
    assert "%20" in url
    pv, grid = pixel_values(gm, url, media_opts(media))
    ref_pv, ref_grid = pixel_values(gm, data_url(raw))
    assert torch.equal(pv, ref_pv) and torch.equal(grid, ref_grid)
    local = "file://localhost" + pathname2url(str(media / "a b.png"))
    assert torch.equal(pixel_values(gm, local, media_opts(media))[0], ref_pv)
    with pytest.raises(RequestError, match="names the host 'elsewhere'"):
        build_prompt(gm, image_message("file://elsewhere" + pathname2url(str(media / "a b.png"))), media_opts(media))


def test_file_url_fifo_is_refused_at_once(gm, media):
    os.mkfifo(media / "pipe.png")
    box: dict = {}

    def go():
        try:
            build_prompt(gm, image_message(file_url(media / "pipe.png")), media_opts(media))
        except RequestError as e:
            box["error"] = e

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(20)
    if t.is_alive():  # blocked opening the FIFO: let it go before failing
        os.close(os.open(media / "pipe.png", os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading a FIFO blocked")
    assert box["error"].status == 400 and "is not a regular file" in str(box["error"])


def test_file_url_over_the_limit_is_not_read(gm, media):
    with open(media / "big.png", "wb") as f:
        f.truncate(256 << 20)  # sparse: nothing on disk
    tracemalloc.start()
    try:
        with pytest.raises(RequestError, match=r"the image is 268,435,456 bytes, over the limit of 1,048,576") as e:
            build_prompt(gm, image_message(file_url(media / "big.png")), media_opts(media, max_image_bytes=1 << 20))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert e.value.status == 413
    assert peak < 8 << 20, peak  # the file was refused by its size, not read


def test_file_url_containment(gm, media):
    outside = media.parent / "outside"
    raw = png_bytes(text_on("RGB"))
    (outside / "secret.png").write_bytes(raw)
    (media / "sub").mkdir()
    (media / "sub" / "ok.png").write_bytes(raw)
    os.symlink(outside / "secret.png", media / "link.png")
    os.symlink(media / "sub" / "ok.png", media / "inside.png")
    opts = media_opts(media)
    for url in (file_url(media / "link.png"), file_url(media) + "/../outside/secret.png"):
        with pytest.raises(RequestError, match="is outside the allowed media directory"):
            build_prompt(gm, image_message(url), opts)
    assert build_prompt(gm, image_message(file_url(media / "inside.png")), opts).pages == 1  # a link within it
    with pytest.raises(RequestError, match="is not a regular file"):
        build_prompt(gm, image_message(file_url(media / "sub")), opts)
    with pytest.raises(RequestError, match="No such file"):
        build_prompt(gm, image_message(file_url(media / "none.png")), opts)
    with pytest.raises(RequestError, match=r"not allowed \(start serve or batch with --allowed-media-dir"):
        build_prompt(gm, image_message(file_url(media / "sub" / "ok.png")), InputOptions(CFG, "tiny"))


def test_file_opened_without_following_a_swapped_symlink(media):
    """The path is resolved and checked, then opened component by component without following symlinks: a
    directory swapped for a link out of the media directory in between is not followed."""
    outside = media.parent / "outside"
    (outside / "a.png").write_bytes(b"secret")
    (media / "sub").mkdir()
    (media / "sub" / "a.png").write_bytes(b"inside")
    root, p = media.resolve(), (media / "sub" / "a.png").resolve()
    fd = _open_below(root, p)
    assert os.read(fd, 100) == b"inside"
    os.close(fd)
    os.rename(media / "sub", media / "old")
    os.symlink(outside, media / "sub")  # the swap, after the path was resolved
    with pytest.raises(OSError):
        os.close(_open_below(root, p))
    os.remove(media / "old" / "a.png")
    os.symlink(outside / "a.png", media / "old" / "a.png")  # the file itself swapped for a link
    with pytest.raises(OSError):
        os.close(_open_below(root, root / "old" / "a.png"))


def test_a_clients_added_token_text_is_plain_text_as_in_training(gm):
    """User and system text that holds an added token's text ("<|endoftext|>", "<|user|>") is plain text, as the
    training tasks and GlyphModel.generate tokenize a question: the prompt's ids are generate's, with no control
    token the client wrote; in an assistant's earlier answer too, as training escapes answers."""
    doc, q = TEXT[:900], "What does <|endoftext|> mean after <|user|>?"
    msgs = [{"role": "user", "content": [{"type": "glyph", "glyph": {"text": doc}}, {"type": "text", "text": q}]}]
    p = build_prompt(gm, msgs, InputOptions(CFG, "tiny"))
    inputs, _, _ = gm.build_inputs([doc], [q])
    assert p.input_ids == inputs["input_ids"][0].tolist()
    eos, user = (gm.tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|user|>"))
    assert eos not in p.input_ids and p.input_ids.count(user) == 1  # the template's own <|user|> only
    sys_msg = [{"role": "system", "content": "Say <|endoftext|> never."}, {"role": "user", "content": "Hi"}]
    assert eos not in build_prompt(gm, sys_msg, InputOptions(CFG, "tiny")).input_ids
    # an earlier answer: its added-token text plain too (the model wrote it as text), its thinking tags tokens
    said = "<think>a <|user|> b</think>c <|endoftext|>"
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": said},
             {"role": "user", "content": "And?"}]
    ids = build_prompt(gm, turns, InputOptions(CFG, "tiny")).input_ids
    assert eos not in ids and ids.count(user) == 2  # the template's two user turns only
    want = gm.prompts.ids(gm.prompts.escape_answer(said), escaped=True)
    assert any(ids[i:i + len(want)] == want for i in range(len(ids)))
    with pytest.raises(RequestError, match=r"messages\[0\].content: the text holds U\+10F000"):
        build_prompt(gm, [{"role": "user", "content": "a \U0010F000 b"}], InputOptions(CFG, "tiny"))


# --- image formats: raster formats only, never one whose plugin runs a program (EPS: Ghostscript)

def test_image_formats_are_raster_only_and_nothing_is_run(gm, monkeypatch):
    import subprocess

    from PIL import EpsImagePlugin

    from glyph_rt.serve.inputs import IMAGE_FORMATS, _image_size

    spawned: list = []

    def no_process(args, *a, **k):
        spawned.append(args)
        raise OSError("no process may be started here")

    monkeypatch.setattr(subprocess, "Popen", no_process)
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", "gs")  # as on a machine with Ghostscript installed
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n(client PostScript) print\n"
    formats = "accepted formats: PNG, JPEG, WEBP, GIF, BMP, TIFF"
    errors = []
    for call in (lambda: build_prompt(gm, image_message(data_url(eps)), InputOptions(CFG, "tiny")),
                 lambda: _image_size(eps, "p"), lambda: _decode_image(eps, "p")):
        with pytest.raises(RequestError) as e:
            call()
        errors.append(e.value)
    assert spawned == []  # no Ghostscript
    assert all(e.status == 400 and formats in str(e) for e in errors), errors
    im = text_on("RGB")
    want = np.asarray(im)
    for fmt in IMAGE_FORMATS:
        buf = io.BytesIO()
        im.save(buf, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
        got = _decode_image(buf.getvalue(), "p").numpy()
        assert got.shape == want.shape and (fmt in ("JPEG", "GIF") or np.array_equal(got, want)), fmt
        assert build_prompt(gm, image_message(data_url(buf.getvalue())), InputOptions(CFG, "tiny")).pages == 1


def test_render_overrides_cap_a_pages_pixels_not_the_servers_own_config():
    """A request's dpi and page_size (and horizontal_scale, which widens the page) may make a page of at most
    MAX_PIXELS, the limit of an image_url's image; the server's own --config is never refused, nor a request's
    overrides that leave its page as large."""
    from glyph_rt.serve.inputs import MAX_PIXELS, render_config_for

    small = RenderConfig(page_size=(120, 90))
    for bad in ({"dpi": 300, "page_size": [2400, 2400]}, {"dpi": 300, "page_size": [1800, 1600]},
                {"dpi": 200, "page_size": [2000, 2000], "horizontal_scale": 2.0}):
        with pytest.raises(RequestError, match=f"over the limit of {MAX_PIXELS:,} per page") as e:
            render_config_for(small, bad, "glyph.render_config")
        assert e.value.param == "glyph.render_config" and "page_size" in str(e.value) and "dpi" in str(e.value)
    assert render_config_for(small, {"dpi": 300, "page_size": [1500, 1500]}, "p").drawn_pixels == (6250, 6250)
    big = RenderConfig(page_size=(2400, 2400), dpi=300)  # an operator's choice: 100 Mpx pages
    assert render_config_for(big, None, "p") is big
    assert render_config_for(big, {"font_size": 9, "margin_x": 20}, "p").dpi == 300
    assert render_config_for(big, {"dpi": 300, "page_size": [2400, 2400]}, "p").dpi == 300
    with pytest.raises(RequestError, match="horizontal_scale 1.5 is 150,000,000 pixels"):
        render_config_for(big, {"horizontal_scale": 1.5}, "p")
