"""The engine in a process of its own: what happens when that process cannot start, dies, or loses its server.
(The API itself over an EngineProcess is tested with the in-process engine's tests in test_serve_api.py.)"""
import json
import os
import signal
import time

import httpx
import pytest

from glyph_rt import RenderConfig
from glyph_rt.serve.app import ServerThread, build_app
from glyph_rt.serve.engine_process import EngineProcess
from glyph_rt.serve.service import ServeConfig

CFG = RenderConfig(page_size=(120, 90))


def config(model) -> ServeConfig:
    return ServeConfig(model=str(model), served_model_name="tiny", render_config=CFG, device="cpu")


def test_a_checkpoint_that_cannot_load_is_an_error_naming_it(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(RuntimeError, match="the engine process could not start"):
        EngineProcess(config(tmp_path))


def test_an_engine_process_killed_while_loading_is_an_error_with_its_exit_code(ckpt):
    import multiprocessing
    import threading

    before = {p.pid for p in multiprocessing.active_children()}

    def new_children():
        return [p for p in multiprocessing.active_children() if p.pid not in before]

    def kill_it():
        deadline = time.monotonic() + 60
        while not new_children() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # while it imports and loads (as the kernel's OOM killer would)
        for p in new_children():
            os.kill(p.pid, signal.SIGKILL)

    t = threading.Thread(target=kill_it, daemon=True)
    t.start()
    with pytest.raises(RuntimeError, match=r"the engine process exited \(code -9\) while loading"):
        EngineProcess(config(ckpt))
    t.join(10)


def test_a_dead_engine_fails_its_requests_with_503_and_the_server_stays_up(ckpt):
    ep = EngineProcess(config(ckpt))
    try:
        with ServerThread(build_app(ep)) as s:
            url = s.url + "/v1/chat/completions"
            ok = httpx.post(url, json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}, timeout=60)
            assert ok.status_code == 200
            body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3000, "ignore_eos": True,
                    "stream": True}
            with httpx.stream("POST", url, json=body, timeout=60) as r:
                lines = r.iter_lines()
                for _ in range(4):
                    next(lines)
                os.kill(ep.process.pid, signal.SIGKILL)
                rest = [x for x in lines if x.startswith("data: {")]
            err = json.loads(rest[-1][len("data: "):])["error"]
            assert err["code"] == "engine_stopped" and "restart the server" in err["message"]
            assert httpx.get(s.url + "/health").status_code == 503
            again = httpx.post(url, json={"messages": [{"role": "user", "content": "hi"}]}, timeout=60)
            assert again.status_code == 503 and "engine process has stopped" in again.json()["error"]["message"]
            assert httpx.get(s.url + "/v1/models").status_code == 200  # the server itself answers
    finally:
        ep.shutdown()


def test_the_engine_exits_when_its_server_is_gone(ckpt):
    ep = EngineProcess(config(ckpt))
    ep._conn.close()  # as when the server's process is killed: the pipe closes
    ep.process.join(60)
    assert ep.process.exitcode == 0


def test_shutdown_stops_the_process(ckpt):
    ep = EngineProcess(config(ckpt))
    t = time.monotonic()
    ep.shutdown()
    assert not ep.process.is_alive() and ep.process.exitcode == 0 and time.monotonic() - t < 30


def test_the_engine_process_exits_when_its_engines_thread_stops(ckpt):
    import multiprocessing
    import threading

    from glyph_rt.serve.engine_process import _EngineSide
    from glyph_rt.serve.service import ChatService

    service = ChatService.from_config(config(ckpt))
    server_end, engine_end = multiprocessing.Pipe()
    side = _EngineSide(service, engine_end, workers=1)
    result = {}
    t = threading.Thread(target=lambda: result.update(ok=side.run(health_interval=0.05)))
    t.start()
    service.engine.shutdown()  # the thread gone, as after an error no step caught
    deadline = time.monotonic() + 10
    while t.is_alive() and time.monotonic() < deadline:  # steady traffic does not hide it
        server_end.send(("metrics", 0))
        time.sleep(0.01)
    t.join(1)
    assert not t.is_alive() and result == {"ok": False}  # _engine_main then exits with code 1
    server_end.close()
