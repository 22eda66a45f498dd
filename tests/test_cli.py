import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from glyph_rt.cli import main
from glyph_rt.render.textio import sample_text


def test_render_sample(tmp_path, capsys):
    assert main(["render", "--out", str(tmp_path), "--quiet"]) == 0
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["pages"] == len(list(tmp_path.glob("page_*.png"))) > 1
    for k in ("page_sizes", "visual_tokens", "text_tokens", "compression_ratio", "missing_glyphs", "seconds"):
        assert k in s
    assert s["input"] == "built-in sample"


def test_render_stdin_and_glyph_config(tmp_path):
    from glyph_rt.render.config import GLYPH_CONFIG_EN
    from glyph_rt.render.fonts import BUILTIN_FONTS

    cfg = tmp_path / "config_en.json"
    cfg.write_text(json.dumps({**GLYPH_CONFIG_EN, "font-path": str(BUILTIN_FONTS["sans"])}))
    r = subprocess.run([sys.executable, "-m", "glyph_rt.cli", "render", "-", "--config", str(cfg), "--out",
                        str(tmp_path / "o")], input="hello world\n" * 50, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "-> 1 page (" in r.stdout and "visual tokens" in r.stdout
    assert (tmp_path / "o" / "page_001.png").is_file()


def test_stats_prints_the_ratio(capsys):
    assert main(["stats"]) == 0
    assert float(capsys.readouterr().out) > 1


def test_errors_are_reported(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok \xff")
    assert main(["render", str(bad), "--out", str(tmp_path)]) == 2
    assert "invalid UTF-8 at byte 3" in capsys.readouterr().err
    assert main(["render", str(tmp_path / "missing.txt")]) == 2
    assert main(["render", "--preset", "nope"]) == 2
    assert "preset" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["render", "--device", "cuda"]) == 2
        assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_render_on_the_gpu_writes_the_same_pages(tmp_path, backend):
    cpu, gpu = tmp_path / "cpu", tmp_path / "gpu"
    assert main(["render", "--out", str(cpu), "--quiet"]) == 0
    assert main(["render", "--out", str(gpu), "--quiet", "--device", "cuda", "--backend", backend]) == 0
    a, b = sorted(cpu.glob("page_*.png")), sorted(gpu.glob("page_*.png"))
    assert [p.name for p in a] == [p.name for p in b]
    assert all(p.read_bytes() == q.read_bytes() for p, q in zip(a, b))
    s = json.loads((gpu / "summary.json").read_text())
    assert s["device"].startswith("cuda") and s["backend"] == backend and s["layout_backend"] == "cpu"


def cli(*args, **kw):
    """Runs glyph-rt in a fresh process, as a user does."""
    return subprocess.run([sys.executable, "-m", "glyph_rt.cli", *args], capture_output=True, text=True,
                          timeout=120, **kw)


@pytest.mark.parametrize("argv, message", [
    (["render", "--max-pages", "0"], "--max-pages must be a positive whole number, got '0'"),
    (["render", "--max-pages", "-1"], "--max-pages must be a positive whole number"),
    (["render", "--device", "gpu"], "'gpu' is not a device; use cpu, cuda or cuda:N"),
    (["generate", "--model", ".", "--context", "x", "--question", "q", "--max-new-tokens", "-3"],
     "--max-new-tokens must be a positive whole number"),
])
def test_bad_flags_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_bad_paths_are_reported_before_any_work(tmp_path, capsys):
    f = tmp_path / "a_file"
    f.write_text("x")
    text = tmp_path / "t.txt"
    text.write_text("hello " * 100)
    cases = [
        (["render", str(text), "--out", str(f)], "is a file; give a directory"),
        (["render", str(text), "--out", str(f / "sub")], "a parent of it is a file"),
        (["render", str(tmp_path), "--out", str(tmp_path / "o1")], "is a directory; give a text file"),
        (["render", str(text), "--out", "/proc/glyph-rt-out"], "cannot create it"),
        (["render", str(text), "--out", str(tmp_path / "o2"), "--tokenizer", str(tmp_path / "nope.json")],
         "--tokenizer"),
        (["stats", str(text), "--tokenizer", "none"], "stats needs a tokenizer"),
        (["generate", "--model", str(tmp_path / "nope"), "--context", str(text), "--question", "q"],
         "--model"),
        (["generate", "--model", str(tmp_path), "--context", str(tmp_path), "--question", "q"],
         "--context: "),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
    assert not list(tmp_path.glob("o*/page_*.png"))  # nothing was rendered


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a CPU-only torch")
def test_generate_on_cuda_without_cuda_fails_before_loading(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("hello")
    # the directory holds no checkpoint at all: the device is checked first
    assert main(["generate", "--model", str(tmp_path), "--context", str(text), "--question", "q",
                 "--device", "cuda"]) == 2
    assert "--device cuda: this torch" in capsys.readouterr().err


@pytest.mark.skipif(hasattr(__import__("os"), "geteuid") and __import__("os").geteuid() == 0,
                    reason="root may write anywhere")
def test_unwritable_out(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    assert main(["render", "--out", str(ro), "--quiet"]) == 2
    assert "is not writable" in capsys.readouterr().err


def test_empty_input(tmp_path):
    out = tmp_path / "o"
    r = cli("render", "-", "--out", str(out), input="")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("empty input, 0 pages") == 1 and "page_000" not in r.stdout
    s = json.loads((out / "summary.json").read_text())
    assert s["pages"] == 0 and s["complete"] is True
    assert [p.name for p in out.iterdir()] == ["summary.json"]


def test_a_second_run_leaves_no_stale_pages(tmp_path):
    out = tmp_path / "o"
    assert main(["render", "--out", str(out), "--quiet", "--tokenizer", "none"]) == 0
    first = len(list(out.glob("page_*.png")))
    text = tmp_path / "t.txt"
    text.write_text("short\n")
    assert main(["render", str(text), "--out", str(out), "--quiet", "--tokenizer", "none"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert first > 1 and s["pages"] == 1 and sorted(p.name for p in out.iterdir()) == ["page_001.png", "summary.json"]


def test_summary_times_the_whole_command(tmp_path):
    r = cli("render", "--out", str(tmp_path), "--tokenizer", "none")
    assert r.returncode == 0, r.stderr
    sec = json.loads((tmp_path / "summary.json").read_text())["seconds"]
    parts = ("startup", "setup", "layout", "raster", "write_wait", "tokens")
    assert all(sec[k] >= 0 for k in parts) and sec["startup"] > 0
    assert sum(sec[k] for k in parts) <= sec["total"] * 1.05 + 0.01
    assert "start-up" in r.stdout and "layout" in r.stdout


def test_chunks_are_sized_by_bytes_and_buffers_are_reused():
    from glyph_rt.render.pages import Document
    from glyph_rt.render.config import RenderConfig
    from glyph_rt.render.textio import sample_text

    big = Document("x", RenderConfig(dpi=600))
    W, H = big.canvas
    assert big.chunk_pages() == max(1, (64 << 20) // (W * H * 3)) == 1  # a 600-dpi page is ~100 MB
    doc = Document(sample_text())
    ref, ref_sizes = doc.rasterize()
    page = doc.canvas[0] * doc.canvas[1] * 3
    got, seen = [], set()
    for start, buf, sizes in doc.iter_chunks(chunk_bytes=3 * page + 1, buffers=2):
        assert len(sizes) <= 3
        seen.add(buf.__array_interface__["data"][0])
        got.append(buf.copy())
        assert sizes == ref_sizes[start:start + len(sizes)]
    assert len(seen) == 2 and np.array_equal(np.concatenate(got), ref)
    with pytest.raises(ValueError, match="chunk"):
        next(doc.iter_chunks(-1))


def test_help_and_stats_do_not_import_torch(tmp_path):
    for argv in (["--help"], ["stats", "--tokenizer", "default"]):
        r = subprocess.run([sys.executable, "-X", "importtime", "-m", "glyph_rt.cli", *argv], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time")}
        assert "torch" not in imported and "transformers" not in imported
        if argv == ["--help"]:
            assert "numpy" not in imported


def test_closed_stdin_and_full_or_closed_stdout(tmp_path):
    r = subprocess.run(f"exec {sys.executable} -m glyph_rt.cli render - --out {tmp_path / 'o'} <&-", shell=True,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "standard input is closed" in r.stderr and "Traceback" not in r.stderr
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "glyph_rt.cli", "render", "--out", str(tmp_path / "p"),
                            "--tokenizer", "none"], stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert r.returncode == 1 and "cannot write to standard output" in r.stderr and "Traceback" not in r.stderr
    assert json.loads((tmp_path / "p" / "summary.json").read_text())["complete"] is True
    r = subprocess.run(f"exec {sys.executable} -m glyph_rt.cli stats - >&- <<< 'hello'", shell=True,
                       executable="/bin/bash", capture_output=False, stderr=subprocess.PIPE, text=True, timeout=120)
    assert r.returncode == 1 and "standard output (it is closed)" in r.stderr


@pytest.mark.parametrize("signame,rc,said", [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated by SIGTERM")])
def test_ctrl_c_leaves_a_consistent_directory(tmp_path, signame, rc, said):
    """Ctrl-C, and SIGTERM (a timeout, docker stop, a scheduler), stop render with whole pages and no gap."""
    import signal
    import time

    from PIL import Image

    from glyph_rt.render.textio import sample_text

    text = tmp_path / "big.txt"
    text.write_text(sample_text() * 30)  # ~2M characters, ~270 pages
    out = tmp_path / "o"
    # SIGINT as a terminal's Ctrl-C finds it: the tests may run under a shell's background job, which ignores it
    p = subprocess.Popen([sys.executable, "-m", "glyph_rt.cli", "render", str(text), "--out", str(out),
                          "--tokenizer", "none", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not (out / "page_005.png").exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    p.send_signal(getattr(signal, signame))
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == rc, stderr
    assert "Traceback" not in stderr and said in stderr
    s = json.loads((out / "summary.json").read_text())
    files = sorted(out.iterdir())
    assert s["complete"] is False and s["stopped_by"] == said
    assert [f.name for f in files] == [f"page_{i + 1:03d}.png" for i in range(s["pages"])] + ["summary.json"]
    assert 5 <= s["pages"] < 270
    for f, (w, h) in zip(files, s["page_sizes"]):
        assert Image.open(f).size == (w, h)
        Image.open(f).load()  # a complete file
    # the counts describe the pages on disk: the text up to the last one's end, the rest unplaced
    from glyph_rt.render.pages import Document

    full = text.read_text()
    end = Document(full).page_spans()[s["pages"] - 1][1]
    assert s["placed_chars"] == sum(not c.isspace() for c in full[:end])
    assert s["unplaced_chars"] == len(full) - end == s["characters"] - end


def test_a_run_stopped_before_its_first_page_leaves_no_earlier_summary(tmp_path, monkeypatch, capsys):
    """SIGTERM while the input is read or laid out (a second or more for a large file): the run exits as
    terminated, and the directory no longer holds an earlier run's summary claiming to be complete."""
    import os
    import signal

    from glyph_rt import cli as cli_module

    out = tmp_path / "o"
    assert main(["render", "--out", str(out), "--tokenizer", "none", "--quiet"]) == 0
    assert json.loads((out / "summary.json").read_text())["complete"] is True

    def terminated_in_layout(args, config):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM was not turned into an interrupt")

    def unhandled(signum, frame):  # what the signal would do were render's handler not installed yet: end it
        raise SystemExit(-signum)

    monkeypatch.setattr(cli_module, "_document", terminated_in_layout)
    (tmp_path / "big.txt").write_text("other text")
    old = signal.signal(signal.SIGTERM, unhandled)
    try:
        assert main(["render", str(tmp_path / "big.txt"), "--out", str(out), "--tokenizer", "none"]) == 143
    finally:
        signal.signal(signal.SIGTERM, old)
    assert "terminated by SIGTERM" in capsys.readouterr().err
    assert list(out.iterdir()) == []


def test_a_write_error_leaves_a_consistent_directory(tmp_path):
    import resource

    def small_files():  # any file over 20 kB fails to write (EFBIG): full pages do, summary.json does not
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    out = tmp_path / "o"
    r = cli("render", "--out", str(out), "--tokenizer", "none", preexec_fn=small_files)
    assert r.returncode == 2 and "File too large" in r.stderr and "page_001.png" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["complete"] is False and s["pages"] == 0 and s["stopped_by"].startswith("OSError")
    assert [p.name for p in out.iterdir()] == ["summary.json"]
    assert s["placed_chars"] == s["whitespace_chars"] == 0 and s["unplaced_chars"] == s["characters"]


def test_max_pages_ratio_and_stats_agree(tmp_path, capsys):
    from glyph_rt.render.tokens import get_tokenizer

    assert main(["render", "--max-pages", "1", "--out", str(tmp_path), "--quiet"]) == 0
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["truncated"] and s["pages"] == 1
    assert s["text_tokens"] == get_tokenizer().count(sample_text()[:s["text_tokens_chars"]])
    assert 1.5 < s["compression_ratio"]["glm4v"] < 4  # was 21x: the whole text's tokens against one page
    assert main(["stats", "--max-pages", "1"]) == 0
    assert float(capsys.readouterr().out) == pytest.approx(s["compression_ratio"]["glm4v"], abs=1e-3)


def test_stats_and_render_agree_on_empty_input(tmp_path):
    r = cli("stats", "-", input="")
    assert r.returncode == 0 and r.stdout.strip() == "n/a", r.stderr
    r = cli("render", "-", "--out", str(tmp_path), input="")
    assert r.returncode == 0 and json.loads((tmp_path / "summary.json").read_text())["compression_ratio"] == {
        "glm4v": None, "qwen2_5_vl": None}


def test_pipes_and_dev_stdin_are_inputs(tmp_path):
    command = f"{sys.executable} -m glyph_rt.cli render <(printf 'hello pipe') --out {tmp_path / 'a'} --tokenizer none"
    r = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "-> 1 page" in r.stdout, r.stderr
    r = cli("render", "/dev/stdin", "--out", str(tmp_path / "b"), "--tokenizer", "none", input="hello stdin")
    assert r.returncode == 0 and "/dev/stdin: 11 characters -> 1 page" in r.stdout, r.stderr


def test_devices_are_refused_as_inputs(tmp_path, capsys):
    """/dev/zero would be read forever: a device is refused by name, before any work."""
    from glyph_rt.render.textio import read_text

    for argv in (["render", "/dev/zero", "--out", str(tmp_path / "o")], ["stats", "/dev/zero"],
                 ["generate", "--model", str(tmp_path), "--context", "/dev/zero", "--question", "q"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "'/dev/zero' is a character device, not a text file" in err and "Traceback" not in err, err
    with pytest.raises(ValueError, match="'/dev/zero' is a character device"):
        read_text("/dev/zero")
    assert not (tmp_path / "o").exists()


def test_stats_prints_na_where_the_model_refuses_a_page(monkeypatch, capsys):
    """As render's summary (visual_tokens null): a page past the model's aspect limit gives n/a, not an error."""
    from glyph_rt.render import pages

    def refuse(sizes, model):
        raise ValueError(f"page aspect ratio 207 is over {model}'s 200")
    monkeypatch.setattr(pages, "visual_tokens", refuse)
    assert main(["stats", "--model", "qwen2_5_vl"]) == 0  # the built-in sample
    out, err = capsys.readouterr()
    assert out.strip() == "n/a" and "qwen2_5_vl refuses page 1" in err, (out, err)


def test_invalid_utf8_offset_counts_the_bom(tmp_path, capsys):
    f = tmp_path / "bom.txt"
    f.write_bytes(b"\xef\xbb\xbfabc\xffdef")
    assert main(["render", str(f), "--out", str(tmp_path / "o")]) == 2
    assert "invalid UTF-8 at byte 6 (b'\\xffdef')" in capsys.readouterr().err


def test_empty_out_is_refused_and_only_own_files_are_cleared(tmp_path):
    r = cli("render", "--out", "", cwd=tmp_path)
    assert r.returncode == 2 and "--out is empty" in r.stderr and not list(tmp_path.iterdir())
    (tmp_path / "page_cover.png").write_bytes(b"someone else's")
    (tmp_path / "page_002.png").write_bytes(b"an earlier run's")
    (tmp_path / "page_0001.png").write_bytes(b"a name the writer never gives")
    assert main(["render", "--max-pages", "1", "--out", str(tmp_path), "--quiet", "--tokenizer", "none"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["page_0001.png", "page_001.png", "page_cover.png",
                                                           "summary.json"]


@pytest.mark.parametrize("argv, message", [
    (["--backend", "cuda"], "--backend cuda draws on a GPU: add --device cuda"),
    (["--backend", "triton"], "--backend triton draws on a GPU"),
    (["--backend", "vulkan"], "--backend 'vulkan' is not a backend: with --device cpu choose auto, cpu, reference"),
    (["--backend", "reference", "--device", "cuda"], "--backend 'reference' is not a backend: with --device cuda"),
])
def test_bad_backend_is_refused_before_any_work(tmp_path, argv, message, capsys):
    out = tmp_path / "o"
    assert main(["render", *argv, "--out", str(out), "--tokenizer", str(tmp_path / "nope.json")]) == 2
    err = capsys.readouterr().err
    assert message in err and "unknown" not in err and not out.exists()  # checked before --out and the tokenizer
    assert main(["stats", *argv]) == 2 and message in capsys.readouterr().err


def test_search_says_when_the_best_is_below_the_floor(tmp_path, monkeypatch, capsys):
    from glyph_rt import search
    from glyph_rt.search.loop import SearchResult

    best = {"hash": "abc", "accuracy": 0.5, "compression": 3.0}
    for feasible in (False, True):
        result = SearchResult(best=best, config=None, front=[best], stop_reason="generations", evaluations=8,
                              generations=1, history=tmp_path / "history.jsonl", feasible=feasible)
        monkeypatch.setattr(search, "run_search", lambda *a, result=result, **k: result)
        assert main(["search", "--out", str(tmp_path), "objective.floor=0.9", "--quiet"]) == 0
        out = capsys.readouterr().out
        assert "best abc: accuracy 0.5000, compression 3.000" in out
        assert ("below objective.floor 0.9 (no config reached it)" in out) != feasible


def test_search_says_its_default_evaluator_is_a_stand_in(tmp_path, monkeypatch, capsys):
    from glyph_rt import search
    from glyph_rt.search.loop import SearchResult

    best = {"hash": "abc", "accuracy": 0.5, "compression": 3.0}
    result = SearchResult(best=best, config=None, front=[best], stop_reason="generations", evaluations=8,
                          generations=1, history=tmp_path / "history.jsonl", feasible=True)
    monkeypatch.setattr(search, "run_search", lambda *a, **k: result)
    assert main(["search", "--out", str(tmp_path / "a"), "--quiet"]) == 0
    assert "evaluator: synthetic, a closed-form stand-in" in capsys.readouterr().err
    assert main(["search", "--out", str(tmp_path / "b"), "evaluator.kind=legibility", "--quiet"]) == 0
    assert "synthetic" not in capsys.readouterr().err


def test_generate_names_its_options_in_errors_about_the_context_and_question(tmp_path, ckpt, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    # an empty directory as --model: the context is refused before any checkpoint is read
    assert main(["generate", "--model", str(tmp_path), "--context", str(empty), "--question", "q"]) == 2
    err = capsys.readouterr().err
    assert f"--context {str(empty)!r} is empty" in err and "contexts[0]" not in err
    text = tmp_path / "t.txt"
    text.write_text("The vault code is 4711.")
    assert main(["generate", "--model", str(ckpt), "--context", str(text), "--question", "<|image|> where?",
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "--question: contains the image token '<|image|>'" in err and "questions[0]" not in err


def test_generate_takes_the_checkpoints_generation_config_without_max_new_tokens(tmp_path, capsys):
    import re

    from glyph_rt.models.tiny import tiny_glm4v_checkpoint

    path = tiny_glm4v_checkpoint(tmp_path / "ck")
    cfg = json.loads((path / "generation_config.json").read_text())
    (path / "generation_config.json").write_text(json.dumps({**cfg, "max_new_tokens": 3, "eos_token_id": []}))
    text = tmp_path / "t.txt"
    text.write_text("The vault code is 4711.")
    base = ["generate", "--model", str(path), "--context", str(text), "--question", "code?", "--device", "cpu"]
    assert main(base) == 0
    assert re.search(r"for 3 tokens\]", capsys.readouterr().err)
    assert main([*base, "--max-new-tokens", "5"]) == 0  # the option over the checkpoint's
    assert re.search(r"for 5 tokens\]", capsys.readouterr().err)


def test_out_of_memory_is_one_line(monkeypatch, capsys):
    """The C++ engines' std::bad_alloc (MemoryError with that text) says what happened and what to do."""
    from glyph_rt import cli

    def oom(args):
        raise MemoryError("std::bad_alloc")

    monkeypatch.setattr(cli, "cmd_backends", oom)
    assert cli.main(["backends"]) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("glyph-rt: error: out of memory; give it less at once") and "bad_alloc" not in err


def test_a_signal_ignored_at_start_stays_ignored(tmp_path):
    """Under nohup SIGHUP is ignored: render keeps it so (a closed terminal does not stop it); SIGTERM still stops it."""
    import signal

    from glyph_rt import cli

    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with cli._terminate_as_interrupt():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_IGN, signal.SIG_DFL)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, old)
