"""Test device selection.

`--device auto|cpu|cuda` (default: $GLYPH_RT_TEST_DEVICE, else auto = cuda when torch sees a GPU)
picks where tests put the tensors they can take on either device: the `device` fixture and
`TEST_DEVICE` below. On the CPU the Triton kernels run in Triton's interpreter; on CUDA they are
compiled, and the interpreter is switched off.
"""
import contextlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

DEVICES = ("auto", "cpu", "cuda")

try:  # every run draws the same property-test examples (a failure is never a flake); GLYPH_RT_FUZZ_EXAMPLES=N
    from hypothesis import settings as _hypothesis  # draws new ones, as test_fuzz's long mode does

    _hypothesis.register_profile("glyph_rt", derandomize=not os.environ.get("GLYPH_RT_FUZZ_EXAMPLES"))
    _hypothesis.load_profile("glyph_rt")
except ImportError:
    pass


def resolve_device(name: str) -> str:
    if name not in DEVICES:
        raise pytest.UsageError(f"--device {name!r} (or GLYPH_RT_TEST_DEVICE): use one of {', '.join(DEVICES)}")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--device cuda: torch sees no CUDA device; run with --device cpu")
    return name


# Resolved from the environment now and from --device in pytest_configure, which runs before the
# test modules are imported: the Triton switch is read when the kernels are defined.
TEST_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# GlyphModel.from_pretrained's arguments for tests that compare answers token for token: fp32 on the test device
# (on a GPU it would load bfloat16, whose rounding flips a random tiny model's near-tied greedy choices)
EXACT = {"device": TEST_DEVICE, "dtype": torch.float32}


def _use(device: str) -> None:
    global TEST_DEVICE
    TEST_DEVICE = device
    EXACT["device"] = device
    os.environ["GLYPH_RT_TEST_DEVICE"] = device  # for subprocesses the tests start
    if device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"
    else:
        os.environ.pop("TRITON_INTERPRET", None)
        # references in exact fp32: cuDNN's convolutions (HF's Conv3d patch embedding) default to TF32 on Ampere
        # and later, ~1e-3 off, while the tests hold fp32 kernels to 1e-4
        torch.backends.cudnn.allow_tf32 = False  # (the new fp32_precision API makes reading allow_tf32 raise)
        torch.backends.cuda.matmul.allow_tf32 = False


def pytest_addoption(parser):
    parser.addoption("--device", default=os.environ.get("GLYPH_RT_TEST_DEVICE", "auto"), choices=DEVICES,
                     help="where tests put tensors that can live on either device (default: auto)")


def pytest_configure(config):
    _use(resolve_device(config.getoption("--device")))
    # keep atlas caches of the test run out of the user's home
    os.environ.setdefault("GLYPH_RT_CACHE", str(config.rootpath / ".pytest_cache" / "glyph_rt"))


def pytest_report_header(config):
    return f"glyph_rt test device: {TEST_DEVICE}"


@pytest.fixture
def device() -> torch.device:
    return torch.device(TEST_DEVICE)


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@contextlib.contextmanager
def http_endpoint(respond, get=None):
    """A local HTTP server for clients of OpenAI's API, each request answered in its own thread: respond(body) (a
    POST's bytes), and get(path) for a GET when given, give (status, response bytes, extra headers). Yields the base
    URL (http://127.0.0.1:N/v1)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if get is None:
                self.send_error(501)
                return
            self._answer(*get(self.path))

        def do_POST(self):
            self._answer(*respond(self.rfile.read(int(self.headers.get("Content-Length", 0)))))

        def _answer(self, status, out, headers):
            self.send_response(status)
            for k, v in {"Content-Type": "application/json", **headers, "Content-Length": str(len(out))}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1"
    finally:
        server.shutdown()
        server.server_close()


def chat_completion(content: str, model: str = "m") -> bytes:
    """A chat.completion response body answering `content`."""
    return json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": model,
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": content}}]}).encode()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny random-weight GLM-4.1V checkpoint directory, one per test module."""
    from glyph_rt.models.tiny import tiny_glm4v_checkpoint

    return tiny_glm4v_checkpoint(tmp_path_factory.mktemp("glm4v"))
