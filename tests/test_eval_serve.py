"""The evaluation harness against glyph_rt's own server: the same items scored through `glyph-rt serve`'s app
over real HTTP on 127.0.0.1 equal the in-process target's at temperature 0, as pages and as text."""
import pytest

from glyph_rt import RenderConfig
from glyph_rt.eval import Item, evaluate, make_target

pytest.importorskip("fastapi")
pytest.importorskip("openai")

CFG = RenderConfig(page_size=(200, 150))


def items(n=3):
    return [Item(id=f"q{i}", context=f"The magic number of item {i} is {1000 + i}. " * 12,
                 question="What is the magic number?", answers=[str(1000 + i)], max_new_tokens=4,
                 metadata={"task": "niah_single_1", "length": 256}) for i in range(n)]


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    from glyph_rt.models.tiny import tiny_glm4v_checkpoint

    return make_target(str(tiny_glm4v_checkpoint(tmp_path_factory.mktemp("glm4v"))), device="cpu")


@pytest.fixture(scope="module")
def server(local):
    from glyph_rt.serve.app import ServerThread, build_app
    from glyph_rt.serve.engine import Engine
    from glyph_rt.serve.inputs import InputOptions
    from glyph_rt.serve.service import ChatService

    svc = ChatService(Engine(local.model, max_batch=4).start(), InputOptions(CFG, "tiny-glyph"), 16)
    with ServerThread(build_app(svc)) as s:
        yield s
    svc.shutdown()


@pytest.mark.parametrize("as_text", [False, True], ids=["pages", "text"])
def test_glyph_rt_server_scores_equal_in_process(local, server, as_text):
    remote = make_target(f"openai:{server.url}/v1:tiny-glyph")
    a = evaluate(CFG, items(), local, as_text=as_text, progress=False)
    b = evaluate(CFG, items(), remote, as_text=as_text, progress=False, concurrency=3)
    assert [x["prediction"] for x in a.rows] == [x["prediction"] for x in b.rows]
    assert [x["score"] for x in a.rows] == [x["score"] for x in b.rows]
    if not as_text:
        assert [x["visual_tokens"] for x in a.rows] == [x["visual_tokens"] for x in b.rows]
