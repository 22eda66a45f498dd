"""The command line's checks before expensive work: ports and hosts of `serve`, devices, output paths, render
settings, make-data's text field, a search that scored nothing, start-up time, `python -m glyph_rt`. Each case
runs no model: where one would load, the engine is replaced by one that fails the test."""
import errno
import importlib.util
import json
import socket
import subprocess
import sys

import pytest
import torch

from glyph_rt import cli
from glyph_rt.cli import main

NOT_HERE = "/proc/glyph-rt-nowhere"  # a directory nothing can be created in, root or not


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_engine(monkeypatch):
    """serve/batch must fail before the model loads: any engine started fails the test."""
    pytest.importorskip("uvicorn")
    pytest.importorskip("prometheus_client")
    from glyph_rt.serve import engine_process, service

    def refuse(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(engine_process, "EngineProcess", refuse)
    monkeypatch.setattr(service.ChatService, "from_config", classmethod(refuse))


# ----------------------------------------------------------------- serve: port, host, device, limits
@pytest.mark.parametrize("port", ["99999", "-1", "65536", "80x"])
def test_port_outside_0_to_65535_is_refused(port, capsys):
    with pytest.raises(SystemExit) as e:
        main(["serve", "--model", ".", "--port", port])
    assert e.value.code == 2
    assert f"--port must be a whole number from 0 to 65535 (0: any free port), got '{port}'" in capsys.readouterr().err


def test_host_and_port_are_checked_before_the_model_loads(tmp_path, no_engine, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--model", str(tmp_path), "--port", str(port), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"glyph-rt: error: --port {port}: 127.0.0.1:{port} is in use") and err.count("\n") == 1
    assert main(["serve", "--model", str(tmp_path), "--host", "999.1.1.1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("glyph-rt: error: --host '999.1.1.1' is neither an IP address nor a name that resolves")
    assert main(["serve", "--model", str(tmp_path), "--host", "192.0.2.1", "--device", "cpu"]) == 2  # TEST-NET-1
    assert "--host '192.0.2.1' is not an address of this machine" in capsys.readouterr().err


def test_the_probe_leaves_the_port_to_the_server(monkeypatch):
    """The probe binds as the server does (SO_REUSEADDR: beside an earlier server's TIME_WAIT connections) and
    closes before the server binds: a socket bound and closed without listen() leaves nothing behind."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = srv.accept()
    conn.close()  # the server's side closes first: its address 127.0.0.1:port goes to TIME_WAIT
    client.close()
    srv.close()
    cli._check_listen("127.0.0.1", port)  # an earlier server's TIME_WAIT does not stop a new one
    with socket.socket() as s:  # and the port is the server's at once
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
    free = _free_port()
    cli._check_listen("127.0.0.1", free)
    with socket.socket() as s:  # without SO_REUSEADDR too
        s.bind(("127.0.0.1", free))
        s.listen()
    cli._check_listen("127.0.0.1", 0)

    def denied(self, addr):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(socket.socket, "bind", denied)
    with pytest.raises(cli.UsageError, match=r"--port 80: binding 127\.0\.0\.1:80 is not permitted .*from 1024 up"):
        cli._check_listen("127.0.0.1", 80)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a CPU-only torch")
def test_serve_on_cuda_without_cuda_fails_before_loading(tmp_path, no_engine, capsys):
    req = tmp_path / "req.jsonl"
    req.write_text("")
    for argv in (["serve", "--port", str(_free_port())],
                 ["batch", "--input", str(req), "--output", str(tmp_path / "r.jsonl")]):
        assert main([*argv, "--model", str(tmp_path), "--device", "cuda"]) == 2
        assert "--device cuda: this torch" in capsys.readouterr().err


def test_serve_limits_and_media_dir_are_checked(tmp_path, no_engine, capsys):
    for argv, message in ((["--max-body-mb", "0"], "--max-body-mb must be a positive number, got 0"),
                          (["--max-body-mb", "nan"], "--max-body-mb must be a positive number, got nan"),
                          (["--max-queue-mb", "inf"], "--max-queue-mb must be a positive number, got inf"),
                          (["--timeout", "inf"], "--timeout must be a positive number, got inf"),
                          (["--allowed-media-dir", str(tmp_path / "nope")], "must be an existing directory"),
                          (["--allowed-media-dir", __file__], "must be an existing directory")):
        assert main(["serve", "--model", str(tmp_path), "--device", "cpu", *argv]) == 2, argv
        assert message in capsys.readouterr().err


def test_batch_takes_the_allowed_media_dir_as_serve_does(tmp_path, no_engine, monkeypatch, capsys):
    from glyph_rt.serve import service

    req = tmp_path / "req.jsonl"
    req.write_text("")
    base = ["batch", "--model", str(tmp_path), "--input", str(req), "--output", str(tmp_path / "r.jsonl"),
            "--device", "cpu", "--allowed-media-dir"]
    assert main([*base, str(tmp_path / "nope")]) == 2
    assert "must be an existing directory" in capsys.readouterr().err
    seen = []

    def record(cls, cfg):
        seen.append(cfg)
        raise RuntimeError("stop here")

    monkeypatch.setattr(service.ChatService, "from_config", classmethod(record))
    assert main([*base, str(tmp_path)]) == 2 and "stop here" in capsys.readouterr().err
    assert seen[0].allowed_media_dir == str(tmp_path)
    with pytest.raises(SystemExit):
        main(["batch", "--help"])
    assert "--allowed-media-dir" in capsys.readouterr().out



def test_serve_names_the_missing_server_packages_before_the_model_loads(tmp_path, no_engine, monkeypatch, capsys):
    """fastapi, starlette and uvicorn are imported once the model has loaded: without them serve fails first, as
    _require says it elsewhere; batch needs none of them and goes on to load the model."""
    from glyph_rt.serve import service

    for m in ("fastapi", "starlette", "uvicorn"):
        monkeypatch.setitem(sys.modules, m, None)  # an import of a module mapped to None raises ImportError
    assert main(["serve", "--model", str(tmp_path), "--device", "cpu", "--port", str(_free_port())]) == 2
    assert capsys.readouterr().err == ("glyph-rt: error: serve needs fastapi, starlette, uvicorn: "
                                       "pip install 'glyph_rt[serve]'\n")

    def loads(cls, cfg):
        raise RuntimeError("the model loads")

    monkeypatch.setattr(service.ChatService, "from_config", classmethod(loads))
    req = tmp_path / "req.jsonl"
    req.write_text("")
    assert main(["batch", "--model", str(tmp_path), "--input", str(req), "--output", str(tmp_path / "r.jsonl"),
                 "--device", "cpu"]) == 2
    assert "the model loads" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    assert main(["batch", "--model", str(tmp_path), "--input", str(req), "--output", str(tmp_path / "r.jsonl"),
                 "--device", "cpu"]) == 2
    assert "batch needs prometheus_client: pip install 'glyph_rt[serve]'" in capsys.readouterr().err


def test_train_without_rapidfuzz_prints_its_config_and_names_the_train_extra(tmp_path):
    """The config's checks (reward names) import no rapidfuzz: --print-config works without the train extra, and
    a run names the extra before any work, not `No module named 'rapidfuzz'`."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    code = (
        "import sys; sys.modules['rapidfuzz'] = None\n"
        "from glyph_rt.cli import main\n"
        "assert main(['train', 'rl', '--print-config']) == 0\n"
        f"assert main(['train', 'rl', 'model.path={model}', 'out_dir={tmp_path / 'o'}']) == 2\n"
        "from glyph_rt.train.rewards import format_reward, ocr_reward\n"
        "assert format_reward(['<think>a</think> 42']) == [1.0]\n"
        "try:\n"
        "    ocr_reward(['a'], ['a'])\n"
        "except ImportError as e:\n"
        "    print('ocr_reward:', e, file=sys.stderr)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "grpo:" in r.stdout and "rewards:" in r.stdout  # the config, printed
    assert "glyph-rt: error: train rl needs rapidfuzz: pip install 'glyph_rt[train]'" in r.stderr, r.stderr
    assert "ocr_reward: the OCR reward and CER need rapidfuzz: pip install 'glyph_rt[train]'\n" in r.stderr, r.stderr
    assert "No module named" not in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------- output paths, before any work
def test_batch_output_is_checked_before_the_model_loads(tmp_path, no_engine, capsys):
    req = tmp_path / "req.jsonl"
    req.write_text("")
    base = ["batch", "--model", str(tmp_path), "--input", str(req), "--device", "cpu", "--output"]
    assert main([*base, str(tmp_path)]) == 2
    assert f"--output {str(tmp_path)!r} is a directory; give a file" in capsys.readouterr().err
    assert main([*base, f"{NOT_HERE}/r.jsonl"]) == 2
    assert "cannot create its directory" in capsys.readouterr().err
    assert main([*base, f"{req}/r.jsonl"]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    nested = tmp_path / "new" / "dir" / "r.jsonl"
    assert cli.output_file(str(nested)) == nested and nested.parent.is_dir() and not nested.exists()


def test_output_directories_are_checked_before_any_work(tmp_path, capsys):
    f = tmp_path / "a_file"
    f.write_text("x")
    cases = [(["styles", "--out", str(f), "--n", "2"], f"--out {str(f)!r} is a file"),
             (["styles", "--out", f"{NOT_HERE}/s", "--n", "2"], "cannot create it"),
             (["make-data", "--task", "ocr", "--out", str(f)], f"--out {str(f)!r} is a file"),
             (["make-data", "--task", "ocr", "--out", f"{NOT_HERE}/d"], "cannot create it")]
    if importlib.util.find_spec("transformers"):  # make-tiny-checkpoint needs the models extra first
        cases += [(["make-tiny-checkpoint", str(f / "ck")], "a parent of it is a file"),
                  (["make-tiny-checkpoint", f"{NOT_HERE}/ck"], f"DIR '{NOT_HERE}/ck': cannot create it")]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Errno" not in err, (argv, err)


def test_train_checks_out_dir_and_corpus_before_the_model_loads(tmp_path, monkeypatch, capsys):
    pytest.importorskip("transformers")
    from glyph_rt.train import trainer

    monkeypatch.setattr(trainer, "run", lambda cfg: pytest.fail("the run started"))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    f = tmp_path / "a_file"
    f.write_text("x")
    base = ["train", "sft", f"model.path={model}", "tensorboard=false", "plot=false"]
    assert main([*base, f"out_dir={f}"]) == 2
    assert f"out_dir {str(f)!r} is a file" in capsys.readouterr().err
    assert main([*base, f"out_dir={tmp_path / 'o'}", f"data.loader.corpus={tmp_path / 'nope.jsonl'}"]) == 2
    assert f"data.loader.corpus: {str(tmp_path / 'nope.jsonl')!r} does not exist" in capsys.readouterr().err
    assert main([*base, f"out_dir={f}", "--print-config"]) == 0  # printing the config checks no path


def test_eval_checks_the_dpi_before_generating_items(tmp_path, capsys):
    for m in ("matplotlib", "rapidfuzz", "openai"):
        pytest.importorskip(m)
    out = tmp_path / "ev"
    argv = ["eval", "--suite", "ruler", "--target", "openai:http://127.0.0.1:9/v1", "--out", str(out), "--limit", "1"]
    assert main([*argv, "--dpi", "96,-5"]) == 2
    assert "--dpi -5: dpi: -5.0 must be >= 30" in capsys.readouterr().err
    assert not out.exists()  # no items.jsonl: a corrected rerun is not "the items of another run"


def test_render_config_directory_and_unreadable_input(tmp_path, monkeypatch, capsys):
    assert main(["render", "--config", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert f"--config {str(tmp_path)!r} is a directory; give a RenderConfig JSON file" in capsys.readouterr().err
    from glyph_rt.render import textio

    def denied(path, flag):
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(textio, "check_input", denied)
    secret = tmp_path / "secret.txt"
    secret.write_text("x")
    assert main(["render", str(secret), "--out", str(tmp_path / "o")]) == 2
    assert f"glyph-rt: error: input: cannot read {str(secret)!r} (Permission denied)" in capsys.readouterr().err


# ----------------------------------------------------------------- make-data's text field
def test_make_data_without_the_text_field_fails_and_writes_nothing(tmp_path, capsys):
    pytest.importorskip("pyarrow")
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"body": "hello world", "id": 1}\n{"body": "second record", "id": 2}\n{"body": "3", "id": 3}\n')
    out = tmp_path / "md"
    base = ["make-data", "--task", "ocr", "--input", str(corpus), "--quiet", "--shard-size", "2"]
    assert main([*base, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("glyph-rt: error: no sample made: all 3 samples were skipped (3 records)")
    assert "field 'text' must be a non-empty string" in err and "(its fields: body, id)" in err
    assert "--text-field" in err and not list(out.iterdir())  # no empty shard
    assert main([*base, "--out", str(out), "--text-field", "title"]) == 1
    assert "field 'title' must be" in capsys.readouterr().err and not list(out.iterdir())
    assert main([*base, "--out", str(out), "--text-field", "body"]) == 0
    assert "2 shards written (3 samples" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["ocr-00000.parquet", "ocr-00001.parquet"]
    assert main([*base, "--out", str(out), "--text-field", "id"]) == 2  # the shards were made from another field
    assert "text_field" in capsys.readouterr().err


def test_make_data_rerun_with_other_arguments_shows_both_sides(tmp_path, capsys):
    pytest.importorskip("pyarrow")
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world, a short line to render\n")
    base = ["make-data", "--task", "ocr", "--input", str(corpus), "--out", str(tmp_path / "md"), "--quiet"]
    assert main([*base, "--max-pages", "2"]) == 0
    capsys.readouterr()
    assert main([*base, "--max-pages", "3"]) == 2
    assert "made with other arguments (max_pages: 2 in the shards, 3 now); use a new --out" in capsys.readouterr().err
    assert main([*base, "--max-pages", "3", "--seed", "1"]) == 2
    assert "(seed, max_pages: seed 0 in the shards, 1 now; max_pages 2 in the shards, 3 now)" in \
        capsys.readouterr().err


def test_make_data_writes_an_all_skipped_shard_once_a_sample_is_made(tmp_path):
    pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from glyph_rt.train.export import make_data

    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"x": 1}\n' * 9 + '{"text": "hello world"}\n')
    r = make_data("ocr", tmp_path / "md", [str(corpus)], shard_size=1, progress=False)
    assert (r["written"], r["samples"], r["skipped"]) == (10, 1, 9)
    rows = [pq.read_table(p).num_rows for p in sorted((tmp_path / "md").glob("*.parquet"))]
    assert rows.index(1) > 0 and sorted(rows) == [0] * 9 + [1]  # shard k holds sample k, made or not: resumable


# ----------------------------------------------------------------- search: nothing scored, the eval extra
def test_a_search_that_scored_nothing_exits_1_with_the_first_error(tmp_path, monkeypatch, capsys):
    from glyph_rt.search import SyntheticObjective, objective

    class Crashing(SyntheticObjective):
        def __call__(self, config):
            raise RuntimeError("model crashed")

    monkeypatch.setattr(objective, "make_objective", lambda settings: Crashing(0.5))
    assert main(["search", "--out", str(tmp_path), "generations=0", "--quiet", "outputs.contact_sheet=0"]) == 1
    cap = capsys.readouterr()
    assert "8 configs evaluated; best none" in cap.out
    assert "glyph-rt: error: no config was scored: all 8 of 8 evaluations failed; the first (" in cap.err
    assert cap.err.rstrip().endswith("RuntimeError: model crashed")


def test_search_with_an_eval_evaluator_names_the_extra(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "prometheus_client"
                        else real(name, *a))
    assert main(["search", "--out", str(tmp_path / "s"), "evaluator.kind=eval", f"evaluator.target={tmp_path}",
                 "evaluator.ruler={n: 1}"]) == 2
    assert ("search with evaluator.kind eval needs prometheus_client: pip install 'glyph_rt[search]'"
            in capsys.readouterr().err)
    assert not (tmp_path / "s").exists()  # checked first


# ----------------------------------------------------------------- start-up time, python -m glyph_rt
def test_startup_does_not_count_what_a_shell_did_before_exec(tmp_path):
    """`sh -c 'sleep 2 && exec glyph-rt ...'`: the process is older than the command by the sleep."""
    cmd = f"sleep 2 && exec {sys.executable} -m glyph_rt.cli render --out {tmp_path} --quiet --tokenizer none"
    r = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    sec = json.loads((tmp_path / "summary.json").read_text())["seconds"]
    assert 0 < sec["startup"] < 1.5 and sec["startup"] <= sec["total"]


def test_startup_caps_the_process_age_by_its_cpu_time(monkeypatch):
    monkeypatch.setattr(cli, "_IMPORT_AGE", 30.0)
    monkeypatch.setattr(cli, "_IMPORT_CPU", 0.05)
    monkeypatch.setattr(cli, "_IMPORTED_AT", cli.time.perf_counter() - 0.1)
    assert 0.15 <= cli._startup_seconds() < 1
    monkeypatch.setattr(cli, "_IMPORT_AGE", 0.04)  # several threads' CPU time: the age
    assert 0.14 <= cli._startup_seconds() < 1


def test_python_m_glyph_rt_is_the_command_line():
    r = subprocess.run([sys.executable, "-m", "glyph_rt", "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("glyph-rt "), r.stderr
    r = subprocess.run([sys.executable, "-m", "glyph_rt", "serve", "--model", ".", "--port", "99999"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--port must be a whole number" in r.stderr
    import glyph_rt.__main__  # noqa: F401  imported, it runs nothing


def test_a_cuda_device_index_past_the_gpus_is_refused(monkeypatch):
    from glyph_rt.cli import UsageError, _check_cuda

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    _check_cuda("cuda")
    _check_cuda("cuda:0")
    with pytest.raises(UsageError, match=r"--device cuda:5: this machine has 1 CUDA device\(s\), cuda:0 to cuda:0"):
        _check_cuda("cuda:5")
