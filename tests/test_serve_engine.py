"""The serving engine on a tiny random-weight GLM-4.1V checkpoint: continuous batching, sampling, document cache."""
import re
import threading
import time

import pytest
import torch

from glyph_rt import RenderConfig
from glyph_rt.models import GlyphModel
from glyph_rt.models.tiny import tiny_glm4v_checkpoint
from glyph_rt.render.textio import sample_text
from glyph_rt.serve.engine import Engine, QueueFull, SamplingParams
from glyph_rt.serve.inputs import InputOptions, RequestError, build_prompt

from conftest import EXACT  # fp32 on the test device: answers compared token for token

CFG = RenderConfig(page_size=(120, 90))
TEXT = sample_text()
CONTEXTS = [TEXT[:500], TEXT[2000:2200], TEXT[3000:3900], TEXT[5000:5300]]
QUESTIONS = ["What does the license allow?", "Who may copy it?", "Why?", "Where is it written?"]
GREEDY = dict(temperature=0)


@pytest.fixture(scope="module")
def gm(tmp_path_factory):
    return GlyphModel.from_pretrained(tiny_glm4v_checkpoint(tmp_path_factory.mktemp("glm4v")), render_config=CFG,
                                      **EXACT)


@pytest.fixture(scope="module")
def engine(gm):
    e = Engine(gm, max_batch=8, cache_bytes=64 << 20, prefill_chunk=48).start()  # prompts take several chunks
    yield e
    e.shutdown()


def messages(context, question):
    return [{"role": "user", "content": [{"type": "glyph", "glyph": {"text": context}},
                                          {"type": "text", "text": question}]}]


def prompt(gm, engine, context, question, cache=True):
    return build_prompt(gm, messages(context, question), InputOptions(CFG, "tiny"),
                        cache=engine.cache if cache else None)


def test_prompt_is_the_prompt_builders(gm, engine):
    p = prompt(gm, engine, CONTEXTS[0], QUESTIONS[0], cache=False)
    inputs, rendered, _ = gm.build_inputs(CONTEXTS[:1], QUESTIONS[:1])
    assert p.input_ids == inputs["input_ids"][0].tolist()
    assert p.pages == rendered.images_per_text[0] and p.visual_tokens == rendered.visual_tokens[0]
    assert p.input_ids[p.prefix_len - 1] != gm.image_token_id  # the end-of-image marker is in the prefix
    text = gm.prompts.prompt([5, 3], "Why?")  # expand_ids: the ids of the expanded text, without tokenizing it
    short = gm.tokenizer(gm.prompts.template(gm.prompts.messages(2, "Why?"), True), add_special_tokens=False)
    full = gm.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert gm.prompts.expand_ids(short["input_ids"], [5, 3]) == full


def test_greedy_equals_generate_one_by_one_and_batched(gm, engine):
    refs = [gm.generate(c, q, max_new_tokens=12 + i)[0].token_ids for i, (c, q) in enumerate(zip(CONTEXTS, QUESTIONS))]
    for i, (c, q) in enumerate(zip(CONTEXTS, QUESTIONS)):
        out = engine.complete(prompt(gm, engine, c, q, cache=False), SamplingParams(max_tokens=12 + i, **GREEDY))
        assert out.token_ids == refs[i]
    # all at once: prefills join a running batch of different lengths (left-padded decode)
    results = {}
    before = dict(engine.steps)

    def go(i):
        p = prompt(gm, engine, CONTEXTS[i % 4], QUESTIONS[i % 4], cache=False)
        results[i] = engine.complete(p, SamplingParams(max_tokens=12 + i % 4, **GREEDY)).token_ids

    threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    assert all(results[i] == refs[i % 4] for i in range(8))
    rows = engine.steps["decode_rows"] - before["decode_rows"]
    steps = engine.steps["decode"] - before["decode"]
    assert rows > steps  # decode steps were shared by several requests


def test_document_cache_skips_the_document_and_keeps_the_answer(gm, engine, monkeypatch):
    c = TEXT[7000:7600]
    first = engine.complete(prompt(gm, engine, c, "Who wrote it?"), SamplingParams(max_tokens=10, **GREEDY))
    p2 = prompt(gm, engine, c, "And when?")
    assert all(s.cached and s.pixel_values is None for s in p2.segments)  # not rendered again
    def no_rope_index(*args):
        raise AssertionError("the rope index was computed on a prefix hit")

    with monkeypatch.context() as m:  # the question's positions count on from the cached prefix's
        m.setattr(engine, "_positions", no_rope_index)
        second = engine.complete(p2, SamplingParams(max_tokens=10, **GREEDY))
    assert first.cache_hit == "none" and second.cache_hit == "prefix"
    assert first.token_ids == gm.generate(c, "Who wrote it?", max_new_tokens=10)[0].token_ids
    assert second.token_ids == gm.generate(c, "And when?", max_new_tokens=10)[0].token_ids
    # a different system prompt: the prefix differs, the pages' embeddings are reused
    msgs = [{"role": "system", "content": "Be brief."}] + messages(c, "And when?")
    third = engine.complete(build_prompt(gm, msgs, InputOptions(CFG, "tiny"), cache=engine.cache),
                            SamplingParams(max_tokens=4, **GREEDY))
    assert third.cache_hit == "document"
    # the document's embeddings let go, its prefix kept: rendered again, then its pages dropped on the prefix hit
    kv = engine.cache.peek(p2.prefix_key)
    engine.cache.clear()
    engine.cache.put(p2.prefix_key, kv)
    p4 = prompt(gm, engine, c, "And when?")
    assert all(s.pixel_values is not None for s in p4.segments)
    fourth = engine.complete(p4, SamplingParams(max_tokens=10, **GREEDY))
    assert fourth.cache_hit == "prefix" and fourth.token_ids == second.token_ids
    assert all(s.pixel_values is None for s in p4.segments) and engine.queued_bytes == 0


def test_cache_budget_evicts(gm):
    e = Engine(gm, cache_bytes=4096)
    from glyph_rt.serve.doc_cache import PrefixEntry

    big = PrefixEntry(10, [(torch.zeros(1, 1, 10, 64), torch.zeros(1, 1, 10, 64))], 10)
    assert not e.cache.put("kv:a", big)  # over the budget alone: not stored
    small = PrefixEntry(1, [(torch.zeros(1, 1, 1, 64), torch.zeros(1, 1, 1, 64))], 1)
    for k in "abcdefghij":  # 512 bytes each: 8 fit
        e.cache.put("kv:" + k, small)
    assert e.cache.nbytes <= 4096 and e.cache.peek("kv:b") is None and e.cache.peek("kv:j") is not None


def test_sampling_seed_stop_and_penalty(gm, engine):
    p = prompt(gm, engine, CONTEXTS[0], QUESTIONS[0])
    sp = dict(max_tokens=12, temperature=1.0, top_p=0.9, seed=7)
    a, b = (engine.complete(p, SamplingParams(**sp)) for _ in range(2))
    assert a.token_ids == b.token_ids  # same seed, same tokens
    greedy = engine.complete(p, SamplingParams(max_tokens=12, **GREEDY))
    pen = engine.complete(p, SamplingParams(max_tokens=12, repetition_penalty=1.9, **GREEDY))
    assert pen.token_ids != greedy.token_ids  # the tiny model repeats itself; the penalty changes that
    word = greedy.text.split()[1] if len(greedy.text.split()) > 1 else greedy.text.strip()[:2]
    stopped = engine.complete(p, SamplingParams(max_tokens=12, stop=[word], **GREEDY))
    assert stopped.finish_reason == "stop" and word not in stopped.text and greedy.text.startswith(stopped.text)


def test_limits_before_compute(gm):
    e = Engine(gm, max_batch=1, max_queue=1)  # not started: nothing runs
    p = prompt(gm, e, CONTEXTS[1], QUESTIONS[1], cache=False)
    with pytest.raises(RequestError, match="over the model's context of 4096"):
        e.submit(p, SamplingParams(max_tokens=5000), lambda ev: None)
    with pytest.raises(RequestError, match="temperature"):
        e.submit(p, SamplingParams(temperature=3), lambda ev: None)
    e.submit(p, SamplingParams(max_tokens=4), lambda ev: None)
    with pytest.raises(QueueFull):
        e.submit(p, SamplingParams(max_tokens=4), lambda ev: None)
    with pytest.raises(RequestError, match="cannot be set per request"):
        build_prompt(gm, messages("x" * 10, "q"), InputOptions(CFG, "tiny"), {"font_path": "/etc/passwd"})
    with pytest.raises(RequestError, match="outside the allowed range"):
        build_prompt(gm, messages("x" * 10, "q"), InputOptions(CFG, "tiny"), {"dpi": 5000})
    with pytest.raises(RequestError, match="over this server's limit of 2"):
        build_prompt(gm, messages(TEXT[:3000], "q"), InputOptions(CFG, "tiny", max_pages=2))


def test_cancel_and_timeout(gm):
    e = Engine(gm).start()
    try:
        events = []
        done = threading.Event()

        def on(ev):
            events.append(ev)
            if ev["type"] in ("done", "error"):
                done.set()

        r = e.submit(prompt(gm, e, CONTEXTS[1], QUESTIONS[1]), SamplingParams(max_tokens=3000, ignore_eos=True), on)
        deadline = time.monotonic() + 60
        while not r.output_ids and not r.finished and time.monotonic() < deadline:
            time.sleep(0.001)
        e.cancel(r)
        assert done.wait(30) and r.finish_reason == "cancelled" and len(r.output_ids) < 3000
        done.clear()
        r = e.submit(prompt(gm, e, CONTEXTS[1], QUESTIONS[1]), SamplingParams(max_tokens=3000, ignore_eos=True), on,
                     timeout=0.3)
        assert done.wait(30) and events[-1]["type"] == "error"
        err = events[-1]["error"]  # its compute ran past the timeout: 504, which a retry would only repeat
        assert (err.status, err.code) == (504, "timeout")
        assert not e.running and not e.waiting
    finally:
        e.shutdown()


def outcomes():
    """({name: the request's last event}, on(name) -> an on_event that records its done or error event)."""
    got = {}

    def on(name):
        return lambda ev: got.setdefault(name, ev) if ev["type"] in ("done", "error") else None

    return got, on


def wait_for(got: dict, name: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while name not in got and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_request_that_times_out_in_the_queue_is_a_408(gm):
    """One that never started (the batch full) is told the server was busy: 408, which clients may retry."""
    e = Engine(gm, max_batch=1).start()
    try:
        got, on = outcomes()
        first = e.submit(prompt(gm, e, CONTEXTS[1], QUESTIONS[1]), SamplingParams(max_tokens=3000, ignore_eos=True),
                         on("first"))
        e.submit(prompt(gm, e, CONTEXTS[2], QUESTIONS[2]), SamplingParams(max_tokens=3), on("late"), timeout=0.3)
        wait_for(got, "late")
        err = got["late"]["error"]
        assert (err.status, err.code) == (408, "queue_timeout") and "waited in the queue" in str(err)
        e.cancel(first)
    finally:
        e.shutdown()


def test_a_request_that_spent_most_of_its_timeout_queued_is_a_408_when_it_runs_past_it(gm):
    """A request that waited most of its timeout behind another, then ran past it: the server was busy (408, which
    clients may retry), not a request whose compute alone is too long for the timeout (504)."""
    e = Engine(gm, max_batch=1).start()
    try:
        got, on = outcomes()
        first = e.submit(prompt(gm, e, CONTEXTS[1], QUESTIONS[1]), SamplingParams(max_tokens=3000, ignore_eos=True),
                         on("first"))
        late = e.submit(prompt(gm, e, CONTEXTS[2], QUESTIONS[2]), SamplingParams(max_tokens=3000, ignore_eos=True),
                        on("late"), timeout=2.0)
        time.sleep(1.5)
        e.cancel(first)
        wait_for(got, "late")
        err = got["late"]["error"]
        assert late.started - late.arrival >= 1.5 and late.output_ids  # it ran, after most of its timeout queued
        assert (err.status, err.code) == (408, "queue_timeout") and "in the queue and ran past its timeout" in str(err)
    finally:
        e.shutdown()


def test_requests_being_prepared_hold_their_place_in_the_queue(gm):
    """Engine.reserve: a place for a request about to be rendered, counted against max_queue with those waiting;
    submit(slot=) takes it, release() gives it back (once)."""
    e = Engine(gm, max_batch=1, max_queue=2)  # not started: nothing leaves the queue
    p = prompt(gm, e, CONTEXTS[1], QUESTIONS[1], cache=False)
    a, b = e.reserve(), e.reserve()
    with pytest.raises(QueueFull, match=r"2 requests waiting or being prepared"):
        e.reserve()
    with pytest.raises(QueueFull):  # without a place of its own: the two being prepared fill the queue
        e.submit(p, SamplingParams(max_tokens=4), lambda ev: None)
    assert e.metrics.registry.get_sample_value("glyph_rt_preparing_requests") == 2  # shown in /metrics
    e.submit(p, SamplingParams(max_tokens=4), lambda ev: None, slot=a)
    assert (e.preparing, len(e.waiting), a.held) == (1, 1, False)
    assert e.metrics.registry.get_sample_value("glyph_rt_preparing_requests") == 1
    a.release()  # taken: a no-op
    b.release()
    b.release()
    assert e.preparing == 0
    c = e.reserve()
    with pytest.raises(QueueFull):
        e.reserve()
    c.release()
    assert e.preparing == 0


def test_long_outputs_detokenize_incrementally_to_the_full_decode(gm, engine):
    p = prompt(gm, engine, CONTEXTS[2], QUESTIONS[2])
    out = engine.complete(p, SamplingParams(max_tokens=300, temperature=1.0, seed=3, ignore_eos=True))
    assert len(out.token_ids) == 300
    assert out.text == gm.tokenizer.decode(out.token_ids, skip_special_tokens=True)


def test_a_long_prompt_is_prefilled_in_chunks_between_decode_steps(gm, engine):
    order = []
    done = threading.Event()
    a = engine.submit(prompt(gm, engine, CONTEXTS[1], QUESTIONS[1], cache=False),
                      SamplingParams(max_tokens=400, ignore_eos=True, **GREEDY),
                      lambda ev: order.append("a") if ev["type"] == "delta" else None)
    deadline = time.monotonic() + 60
    while not a.output_ids and not a.finished and time.monotonic() < deadline:
        time.sleep(0.001)
    long = prompt(gm, engine, TEXT[9000:11000], "Why?", cache=False)
    chunks = -(-len(long.input_ids) // engine.prefill_chunk)
    assert chunks >= 4

    def on_b(ev):
        if ev["type"] == "delta" and "b" not in order:
            order.append("b")
        if ev["type"] in ("done", "error"):
            done.set()

    order.append("b submitted")
    engine.submit(long, SamplingParams(max_tokens=2, **GREEDY), on_b)
    assert done.wait(60)
    engine.cancel(a)
    between = order[order.index("b submitted"):order.index("b")].count("a")
    assert between >= chunks - 2  # the running request kept decoding while b's prompt went in


def test_qwen2_5_vl_greedy_equals_generate_and_cache(tmp_path):
    from glyph_rt.models.tiny import tiny_qwen2_5_vl_checkpoint

    qm = GlyphModel.from_pretrained(tiny_qwen2_5_vl_checkpoint(tmp_path / "qwen"), render_config=CFG, **EXACT)
    e = Engine(qm, prefill_chunk=64).start()
    try:
        for c, q in zip(CONTEXTS[:2], QUESTIONS[:2]):
            ref = qm.generate(c, q, max_new_tokens=8)[0].token_ids
            outs = [e.complete(build_prompt(qm, messages(c, q), InputOptions(CFG, "qwen"), cache=e.cache),
                               SamplingParams(max_tokens=8, **GREEDY)) for _ in range(2)]
            assert [o.token_ids for o in outs] == [ref, ref] and outs[1].cache_hit == "prefix"
    finally:
        e.shutdown()


def test_the_vision_tower_runs_a_few_pages_per_step(gm, engine, monkeypatch):
    p = prompt(gm, engine, TEXT[12000:13000], "Who?", cache=False)
    per_page = [s.visual_tokens // s.pages for s in p.segments][0]
    pages_per_step = engine.prefill_chunk // per_page
    assert p.pages > pages_per_step >= 1
    calls = []
    inner = gm.model.model
    original = inner.get_image_features

    def counted(pv, grids, **kw):
        calls.append(len(grids))
        return original(pv, grids, **kw)

    monkeypatch.setattr(inner, "get_image_features", counted)
    out = engine.complete(p, SamplingParams(max_tokens=6, **GREEDY))
    monkeypatch.undo()
    assert sum(calls) == p.pages and max(calls) <= pages_per_step and len(calls) > 1
    assert out.token_ids == gm.generate(TEXT[12000:13000], "Who?", max_new_tokens=6)[0].token_ids


def test_requests_prefilled_together_answer_as_one_at_a_time(gm, monkeypatch):
    """Waiting requests share prefill forwards (rows left-padded: fresh prompts with pages, plain text, a
    question after a cached prefix) and one vision-tower forward for their pages, and answer with the greedy
    tokens each gets alone."""
    e = Engine(gm, max_batch=8, cache_bytes=64 << 20, prefill_chunk=4096).start()
    try:
        params = SamplingParams(max_tokens=8, **GREEDY)
        e.complete(prompt(gm, e, CONTEXTS[0], QUESTIONS[0]), params)  # the document's prefix KV is now cached
        plain = [build_prompt(gm, [{"role": "user", "content": "Who may copy it? " * (i + 1)}], InputOptions(CFG, "t"))
                 for i in range(2)]
        pairs = [(CONTEXTS[0], "And who wrote it?")] + list(zip(CONTEXTS[1:], QUESTIONS[1:]))
        prompts = [prompt(gm, e, c, q) for c, q in pairs] + plain
        refs = [gm.generate(c, q, max_new_tokens=8)[0].token_ids for c, q in pairs]
        refs += [e.complete(p, params).token_ids for p in plain]  # text only: alone on the engine
        groups = []
        original = e._forward_pieces

        def recorded(group):
            groups.append([(pc.at, pc.end) for pc in group])
            return original(group)

        monkeypatch.setattr(e, "_forward_pieces", recorded)
        vision = []
        original_vision = gm.model.model.get_image_features

        def counted(pv, grids, **kw):
            vision.append(len(grids))
            return original_vision(pv, grids, **kw)

        monkeypatch.setattr(gm.model.model, "get_image_features", counted)
        done = threading.Semaphore(0)
        with e._cv:  # all waiting before the engine's next turn
            reqs = [e.submit(p, params, lambda ev: done.release() if ev["type"] in ("done", "error") else None)
                    for p in prompts]
        for _ in reqs:
            assert done.acquire(timeout=120)
        assert [r.finish_reason != "error" for r in reqs] == [True] * len(reqs)
        assert reqs[0].cache_hit == "prefix" and [r.output_ids for r in reqs] == refs
        assert vision == [sum(p.pages for p in prompts[1:len(pairs)])]  # the fresh documents' pages, together
        together = [g for g in groups if len(g) > 1]
        assert together and sum(map(len, groups)) > len(groups)
        assert any(at > 0 for g in together for at, _ in g) and any(at == 0 for g in together for at, _ in g)
    finally:
        e.shutdown()


def test_a_request_that_breaks_a_shared_forward_fails_alone(gm, monkeypatch, caplog):
    """A page that makes the shared vision forward fail, or a prompt that makes the shared prefill forward fail,
    fails its own request only: the forward is run again request by request, and the others answer as alone."""
    e = Engine(gm, max_batch=8, cache_bytes=0, prefill_chunk=4096).start()
    try:
        params = SamplingParams(max_tokens=6, **GREEDY)
        prompts = [prompt(gm, e, c, q, cache=False) for c, q in zip(CONTEXTS, QUESTIONS)]
        refs = [gm.generate(c, q, max_new_tokens=6)[0].token_ids for c, q in zip(CONTEXTS, QUESTIONS)]
        others = torch.cat([s.pixel_values for i, p in enumerate(prompts) if i != 1 for s in p.segments])
        bad_page = next(row for row in prompts[1].segments[0].pixel_values if not (others == row).all(1).any())
        bad_token = next(iter(set(prompts[2].input_ids) - {t for i, p in enumerate(prompts) if i != 2
                                                           for t in p.input_ids}))
        inner, forward = gm.model.model, e._forward
        vision = inner.get_image_features

        def failing_vision(pv, grids, **kw):
            if (pv == bad_page).all(1).any():
                raise ValueError("a bad page")
            return vision(pv, grids, **kw)

        def failing_prefill(ids, *args, **kw):
            if ids.shape[1] > 1 and bool((ids == bad_token).any()):
                raise ValueError("a bad prompt")
            return forward(ids, *args, **kw)

        monkeypatch.setattr(inner, "get_image_features", failing_vision)
        monkeypatch.setattr(e, "_forward", failing_prefill)
        done = threading.Semaphore(0)
        with e._cv:  # all waiting before the engine's next turn: they share forwards
            reqs = [e.submit(p, params, lambda ev: done.release() if ev["type"] in ("done", "error") else None)
                    for p in prompts]
        for _ in reqs:
            assert done.acquire(timeout=120)
        assert [r.finish_reason for r in reqs] == ["length", "error", "error", "length"]
        assert [reqs[0].output_ids, reqs[3].output_ids] == [refs[0], refs[3]]
        retried = [r.getMessage() for r in caplog.records if "one by one" in r.getMessage()]
        assert any("vision forward" in m for m in retried) and any("prefill forward" in m for m in retried)
    finally:
        e.shutdown()


def test_a_failure_giving_a_shared_prefill_back_to_its_rows_runs_them_again_as_they_were(gm, monkeypatch, caplog):
    """A batched prefill that fails while its KV goes back to the rows' own caches (out of memory making the second
    row's) is run again piece by piece on the caches as they were before it: no row gets the piece's tokens twice,
    and those requests and one decoding beside them answer with generate's greedy tokens."""
    e = Engine(gm, max_batch=4, cache_bytes=0, prefill_chunk=4096).start()
    try:
        pairs, lengths = list(zip(CONTEXTS, QUESTIONS))[:3], (24, 8, 9)
        refs = [gm.generate(c, q, max_new_tokens=n)[0].token_ids for (c, q), n in zip(pairs, lengths)]
        own, fired = e._own_cache, []

        def flaky(batch, b, pc, W, T):
            if b == 1 and pc.at and not fired:  # a row with KV before the piece (its question after its pages)
                fired.append(bystander in e.running)
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return own(batch, b, pc, W, T)

        monkeypatch.setattr(e, "_own_cache", flaky)
        done = threading.Semaphore(0)

        def on_event(ev):
            if ev["type"] in ("done", "error"):
                done.release()

        params = [SamplingParams(max_tokens=n, **GREEDY) for n in lengths]
        bystander = e.submit(prompt(gm, e, *pairs[0], cache=False), params[0], on_event)
        while not bystander.output_ids:
            time.sleep(0.001)
        with e._cv:  # both waiting before the engine's next turn: they share prefill forwards
            reqs = [e.submit(prompt(gm, e, c, q, cache=False), sp, on_event)
                    for (c, q), sp in zip(pairs[1:], params[1:])]
        for _ in range(3):
            assert done.acquire(timeout=120)
        assert fired == [True]  # the split failed once, with the bystander decoding
        assert [r.finish_reason for r in [bystander] + reqs] == ["length"] * 3
        assert [r.output_ids for r in [bystander] + reqs] == refs
        assert any("prefill forward over 2 requests failed" in r.getMessage() for r in caplog.records)
    finally:
        e.shutdown()


def test_a_request_whose_kv_is_not_its_length_fails_alone(gm, monkeypatch):
    """A request joining the batch with KV of another length than its own (a bug) fails with a 500 that says so;
    the request decoding beside it goes on to generate's greedy tokens."""
    e = Engine(gm, max_batch=4, cache_bytes=0).start()
    try:
        ref = gm.generate(CONTEXTS[0], QUESTIONS[0], max_new_tokens=16)[0].token_ids
        bad = prompt(gm, e, CONTEXTS[1], QUESTIONS[1], cache=False)
        piece_done = e._piece_done

        def off_by_one(r, at, end, logits):
            piece_done(r, at, end, logits)
            if r.index == 0 and r.kv is not None and r.prompt is bad:
                r.length += 1

        monkeypatch.setattr(e, "_piece_done", off_by_one)
        done = threading.Semaphore(0)
        events = []

        def on_event(ev):
            if ev["type"] in ("done", "error"):
                events.append(ev)
                done.release()

        good = e.submit(prompt(gm, e, CONTEXTS[0], QUESTIONS[0], cache=False), SamplingParams(16, **GREEDY), on_event)
        while not good.output_ids:
            time.sleep(0.001)
        e.submit(bad, SamplingParams(8, **GREEDY), on_event)
        for _ in range(2):
            assert done.acquire(timeout=120)
        err = next(ev["error"] for ev in events if ev["type"] == "error")
        assert err.status == 500 and "KV cache holds" in str(err)
        assert good.finish_reason == "length" and good.output_ids == ref
    finally:
        e.shutdown()


@pytest.mark.parametrize("arch", ["glm4v", "qwen2_5_vl"])
def test_engine_on_glyph_kernels_matches_it_on_sdpa(tmp_path, device, arch):
    """The engine on glyph_rt's kernels (the Triton patch-embedding GEMM, varlen vision and prefill attention over
    left-padded batched pieces, the decode kernel over the left-padded batch cache; compiled on CUDA, interpreted
    on the CPU) against the same engine on PyTorch's SDPA: the same schedule, the same logits at every forward,
    the same greedy tokens (fp32). Qwen2.5-VL's vision tower has window and full attention blocks."""
    from glyph_rt.models import apply_glyph_kernels
    from glyph_rt.models.tiny import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / arch, arch)
    runs = []
    for kernels in (False, True):
        gm = GlyphModel.from_pretrained(ckpt, render_config=CFG, device=device, dtype=torch.float32)
        gm.patch.undo()
        gm.patch = apply_glyph_kernels(gm.model, patch_embed_backend="triton" if kernels else "torch",
                                       attention_backend="glyph" if kernels else "sdpa")
        eng = Engine(gm, max_batch=4, cache_bytes=0, prefill_chunk=64)  # prompts in pieces, batched
        logits, tokens, done = [], {}, threading.Semaphore(0)
        forward = eng._forward
        eng._forward = lambda *a, **kw: logits.append(forward(*a, **kw)) or logits[-1]

        def on_event(ev, i):
            if ev["type"] in ("done", "error"):
                tokens[i] = (ev["type"], list(ev["request"].output_ids))
                done.release()

        for i, (c, q) in enumerate(zip(CONTEXTS[:3], QUESTIONS)):  # queued before it starts: one schedule
            eng.submit(prompt(gm, eng, c[:300], q, cache=False),
                       SamplingParams(max_tokens=3, ignore_eos=True, **GREEDY), lambda ev, i=i: on_event(ev, i))
        eng.start()
        for _ in range(3):
            assert done.acquire(timeout=600)
        eng.shutdown()
        runs.append((logits, tokens, {k: v for k, v in eng.steps.items() if k != "busy_s"}))
    (want, want_tokens, want_steps), (got, got_tokens, got_steps) = runs
    assert got_steps == want_steps and got_steps["prefill_rows"] > got_steps["prefill_forwards"]
    assert got_tokens == want_tokens and all(t[0] == "done" for t in got_tokens.values())
    assert len(got) == len(want)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


def sampled_row(seed=None, **params):
    from glyph_rt.serve.engine import Request

    r = Request(None, SamplingParams(seed=seed, **params), None)
    if r.params.temperature > 0:
        r.generator = torch.Generator().manual_seed(seed)
    return r


def test_batched_sampling_draws_from_the_distribution_with_one_generator_per_request():
    from glyph_rt.serve.engine import next_tokens

    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log()[None]
    r, n = sampled_row(1, temperature=1.0), 4000
    freq = torch.bincount(torch.tensor([next_tokens([r], logits.clone())[0] for _ in range(n)]), minlength=4) / n
    assert torch.allclose(freq, probs, atol=4 * (0.25 / n) ** 0.5)  # within 4 standard deviations
    r = sampled_row(2, temperature=1.0, top_p=0.6)  # top-p keeps the two most likely tokens
    assert {next_tokens([r], logits.clone())[0] for _ in range(300)} == {0, 1}
    # a seed's tokens do not depend on the requests sharing the batch
    alone = sampled_row(7, temperature=0.8, top_p=0.9)
    want = [next_tokens([alone], logits.clone())[0] for _ in range(40)]
    rows = [sampled_row(3, temperature=1.0), sampled_row(7, temperature=0.8, top_p=0.9), sampled_row(temperature=0)]
    got = [next_tokens(rows, logits.repeat(3, 1)) for _ in range(40)]
    assert [t[1] for t in got] == want and all(t[2] == 0 for t in got)
    # repetition penalty (greedy): the seen token's logit is scaled away from zero, and the new token joins them
    r = sampled_row(temperature=0, repetition_penalty=2.0)
    r.seen = torch.tensor([0])
    assert next_tokens([r], logits.clone()) == [1] and r.seen.tolist() == [0, 1]


def test_engine_logprobs_are_the_models_under_a_repetition_penalty(gm, engine):
    """Through the engine's sampling: the penalty picks the tokens, the logprobs stay the model's own."""
    c, q = TEXT[3000:3500], "What is it about?"
    done = engine.complete(prompt(gm, engine, c, q, cache=False),
                           SamplingParams(max_tokens=6, repetition_penalty=1.5, logprobs=True, top_logprobs=2,
                                          **GREEDY))
    inputs, _, _ = gm.build_inputs([c], [q])
    with torch.no_grad():
        ref = gm.model.generate(**inputs, max_new_tokens=6, do_sample=False, repetition_penalty=1.5,
                                output_logits=True, return_dict_in_generate=True)
    want = ref.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    assert done.token_ids == want[:len(done.token_ids)] and len(done.logprobs) == len(done.token_ids)
    for entry, tok, logits in zip(done.logprobs, done.token_ids, ref.logits):
        lp = torch.log_softmax(logits[0].float(), -1)  # the raw logits, before generate's penalty
        assert entry["logprob"] == pytest.approx(lp[tok].item(), abs=1e-4)
        assert [t["logprob"] for t in entry["top_logprobs"]] == pytest.approx(lp.topk(2).values.tolist(), abs=1e-4)


def test_presence_and_frequency_penalties_are_openais(gm, engine):
    """Greedy with presence and frequency penalties equals HF generate under a logits processor that subtracts
    them from the logits of the tokens already generated (the prompt's do not count), after the repetition
    penalty; the batched sampler applies them per row."""
    from transformers import LogitsProcessorList

    from glyph_rt.serve.engine import next_tokens

    c, q = TEXT[3000:3500], "What is it about?"
    inputs, _, _ = gm.build_inputs([c], [q])
    n = inputs["input_ids"].shape[1]

    def openai_penalties(presence, frequency):
        def apply(ids, scores):
            counts = torch.zeros_like(scores[0]).index_add_(0, ids[0, n:], torch.ones(ids.shape[1] - n))
            return scores - (frequency * counts + presence * (counts > 0))[None]
        return apply

    plain = None
    for pres, freq, rep in [(0.0, 1.5, 1.0), (1.5, 0.0, 1.0), (0.7, 0.9, 1.3), (-1.0, 0.0, 1.0)]:
        done = engine.complete(prompt(gm, engine, c, q, cache=False),
                               SamplingParams(max_tokens=10, presence_penalty=pres, frequency_penalty=freq,
                                              repetition_penalty=rep, **GREEDY))
        with torch.no_grad():
            ref = gm.model.generate(**inputs, max_new_tokens=10, do_sample=False, repetition_penalty=rep,
                                    logits_processor=LogitsProcessorList([openai_penalties(pres, freq)]))
        want = ref[0, n:].tolist()
        assert done.token_ids == want[:len(done.token_ids)], (pres, freq, rep)
        plain = plain or engine.complete(prompt(gm, engine, c, q, cache=False),
                                         SamplingParams(max_tokens=10, **GREEDY)).token_ids
        if freq > 0 and rep == 1.0:
            assert done.token_ids != plain  # the tiny model repeats itself; the penalty changes that
    # per row: counts of the row's own output, and the sampled token joins them
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()[None].repeat(2, 1)
    rows = [sampled_row(temperature=0, frequency_penalty=0.4), sampled_row(temperature=0, presence_penalty=0.4)]
    for r in rows:
        r.counts = torch.tensor([2.0, 0, 0, 0])
    assert next_tokens(rows, logits.clone()) == [1, 0]  # 0.5 -> log 0.5 - 0.8 < log 0.3; - 0.4 > log 0.3
    assert rows[0].counts.tolist() == [2, 1, 0, 0] and rows[1].counts.tolist() == [3, 0, 0, 0]
    for bad in (dict(presence_penalty=2.5), dict(frequency_penalty=-3)):
        with pytest.raises(RequestError, match=f"{next(iter(bad))}: .* must be between -2 and 2"):
            SamplingParams(**bad).validate()


def test_n_choices_share_one_prefill_and_sample_as_separate_requests(gm):
    """n choices: one prefill, then choice i decodes as a request of its own with seed + i would (greedy: n copies
    of the greedy answer); usage counts the prompt once and every choice's tokens; the events name each choice."""
    e = Engine(gm, max_batch=4).start()
    try:
        c, q = TEXT[3000:3500], "What is it about?"
        sp = dict(max_tokens=8, temperature=1.0, top_p=0.95, repetition_penalty=1.2, frequency_penalty=0.5,
                  logprobs=True)
        before = e.steps["prefill"]
        many = e.complete(prompt(gm, e, c, q, cache=False), SamplingParams(n=3, seed=11, **sp))
        assert e.steps["prefill"] == before + 1 and len(many.choices) == 3
        for i, choice in enumerate(many.choices):
            alone = e.complete(prompt(gm, e, c, q, cache=False), SamplingParams(seed=11 + i, **sp))
            assert choice.token_ids == alone.token_ids and choice.finish_reason == alone.finish_reason
            assert [x["logprob"] for x in choice.logprobs] == pytest.approx([x["logprob"] for x in alone.logprobs],
                                                                            abs=1e-5)
        assert many.token_ids == many.choices[0].token_ids
        assert many.usage["completion_tokens"] == sum(len(x.token_ids) for x in many.choices)
        assert many.usage["prompt_tokens"] == len(prompt(gm, e, c, q, cache=False).input_ids)
        greedy = e.complete(prompt(gm, e, c, q, cache=False), SamplingParams(n=2, max_tokens=6, **GREEDY))
        assert greedy.choices[0].token_ids == greedy.choices[1].token_ids == \
            e.complete(prompt(gm, e, c, q, cache=False), SamplingParams(max_tokens=6, **GREEDY)).token_ids
        events, done = [], threading.Event()
        e.submit(prompt(gm, e, c, q, cache=False), SamplingParams(n=2, max_tokens=4, seed=1),
                 lambda ev: (events.append((ev["type"], ev.get("index"))), ev["type"] == "done" and done.set()))
        assert done.wait(60)
        assert sorted(x for x in events if x[0] == "finish") == [("finish", 0), ("finish", 1)]
        assert events[-1][0] == "done" and [t for t, _ in events].count("done") == 1
        with pytest.raises(RequestError, match=r"n: 5 choices are more than this server's batch of 4 rows"):
            e.submit(prompt(gm, e, c, q, cache=False), SamplingParams(n=5), print)
        with pytest.raises(RequestError, match=r"n: 0 must be an integer in \[1, 128\]"):
            SamplingParams(n=0).validate()
    finally:
        e.shutdown()


def test_n_choices_cancel_and_fail_together(gm):
    e = Engine(gm, max_batch=4).start()
    try:
        c, q = TEXT[3000:3500], "What is it about?"
        events, done = [], threading.Event()

        def on_event(ev):
            events.append(ev["type"])
            g = ev["request"].group
            if ev["type"] == "delta" and ev["index"] == 1 and not g.cancelled:
                e.cancel(g)  # the request, from a choice's event: every choice stops
            if ev["type"] in ("done", "error"):
                done.set()

        r = e.submit(prompt(gm, e, c, q, cache=False), SamplingParams(n=3, max_tokens=200, ignore_eos=True, seed=3),
                     on_event)
        assert done.wait(60) and events[-1] == "done" and r.finish_reason is not None
        assert all(x.finish_reason == "cancelled" for x in r.choices) and not e.running
        events.clear(), done.clear()
        p = prompt(gm, e, c, q, cache=False)
        r = e.submit(p, SamplingParams(n=3, max_tokens=e.max_positions - len(p.input_ids), ignore_eos=True, seed=3),
                     lambda ev: (events.append(ev["type"]), ev["type"] in ("done", "error") and done.set()),
                     timeout=1.0)
        assert done.wait(60) and events.count("error") == 1 and "done" not in events and "finish" not in events
        assert r.choices is not None and "delta" in events  # it failed while its choices decoded
        time.sleep(0.2)
        assert not e.running and e.metrics is not None
    finally:
        e.shutdown()


def test_logprobs_tokens_carry_their_own_bytes(gm):
    from glyph_rt.serve.logprobs import TokenText

    text = "中文 naïve 😀 ok<|endoftext|>"
    ids = gm.tokenizer(text, add_special_tokens=False).input_ids
    pieces = TokenText(gm.tokenizer)(ids)
    assert b"".join(bytes(b) for _, b in pieces).decode() == text  # parts of one character join into it
    assert any(t == "\ufffd" for t, _ in pieces)  # some token holds part of a character


def test_logprobs_are_the_models_before_penalty_and_temperature():
    from glyph_rt.serve.engine import next_tokens
    from glyph_rt.serve.logprobs import model_logprobs, token_logprobs

    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log()[None].repeat(3, 1)
    rows = [sampled_row(temperature=0, repetition_penalty=2.0, logprobs=True, top_logprobs=2),
            sampled_row(temperature=0),  # asked for none
            sampled_row(5, temperature=0.5, logprobs=True)]
    rows[0].seen = torch.tensor([0])
    raw = model_logprobs(rows, logits)
    tokens = next_tokens(rows, logits)
    got = token_logprobs(raw, rows, tokens)
    assert tokens[0] == 1 and set(got) == {0, 2}  # the penalty moved the choice; row 1 gets nothing
    lp = probs.log().tolist()
    assert got[0][0] == pytest.approx(lp[1]) and [t for t, _ in got[0][1]] == [0, 1]
    assert [v for _, v in got[0][1]] == pytest.approx(lp[:2]) and got[2][1] == []
    assert got[2][0] == pytest.approx(lp[tokens[2]])
    assert model_logprobs(rows[1:2], logits[:1]) is None and token_logprobs(None, rows, tokens) == {}
    for bad, words in [(dict(top_logprobs=2), "needs logprobs: true"),
                       (dict(logprobs=True, top_logprobs=21), "[0, 20]")]:
        with pytest.raises(RequestError, match=re.escape(words)):
            SamplingParams(**bad).validate()


def test_queue_holds_a_bounded_amount_of_rendered_pages(gm):
    e = Engine(gm, max_queue_bytes=1)  # not started: requests wait
    p = prompt(gm, e, CONTEXTS[0], QUESTIONS[0], cache=False)
    assert p.pixel_bytes > 0
    done = threading.Event()
    first = e.submit(p, SamplingParams(max_tokens=3, **GREEDY), lambda ev: ev["type"] == "done" and done.set())
    with pytest.raises(QueueFull):  # the first is admitted whatever its size; the next waits for its pages to go
        e.submit(prompt(gm, e, CONTEXTS[1], QUESTIONS[1], cache=False), SamplingParams(max_tokens=3), print)
    assert e.queued_bytes == p.pixel_bytes
    e.start()
    try:
        assert done.wait(60)
        assert e.queued_bytes == 0 and all(s.pixel_values is None for s in p.segments)  # freed after the vision tower
        assert all(s.embeddings is None for s in p.segments)  # and the embeddings after the prefill
        again = e.complete(p, SamplingParams(max_tokens=3, **GREEDY))  # the prompt again: from the document cache
        assert again.token_ids == first.output_ids
        e.cache.clear()
        with pytest.raises(RequestError, match="build the prompt again"):  # gone from the cache too: said so
            e.complete(p, SamplingParams(max_tokens=3, **GREEDY))
    finally:
        e.shutdown()


def test_requests_wait_for_room_in_the_kv_budget(gm):
    from glyph_rt.models.kv_cache import kv_bytes

    prompts = [prompt(gm, None, CONTEXTS[i], QUESTIONS[i], cache=False) for i in range(3)]
    shortest = min(len(p.input_ids) for p in prompts) + 4
    budget = int(1.5 * shortest * kv_bytes(gm.model.config, 1, gm.model.dtype.itemsize))  # no two fit; one always runs
    e = Engine(gm, kv_cache_bytes=budget).start()
    try:
        out, threads = {}, []
        for i, p in enumerate(prompts):
            threads.append(threading.Thread(target=lambda i=i, p=p: out.setdefault(
                i, e.complete(p, SamplingParams(max_tokens=4, **GREEDY)).token_ids)))
            threads[-1].start()
        for t in threads:
            t.join(120)
        assert e.steps["decode_rows"] == e.steps["decode"]  # never two requests in a decode step
        for i in range(3):
            assert out[i] == gm.generate(CONTEXTS[i], QUESTIONS[i], max_new_tokens=4)[0].token_ids
    finally:
        e.shutdown()


def test_the_caches_allocated_stay_within_the_kv_budget(gm):
    """The KV budget admits a long prompt with a short answer beside a short prompt with a long answer by rows x the
    longest prompt + max_tokens; the caches then allocated (the batch's, a prompt's while it is prefilled) stay
    within it: the batch's room is the fewest tokens a row has left, not the most."""
    def text(t):
        return build_prompt(gm, [{"role": "user", "content": t}], InputOptions(CFG, "tiny"))

    long, short = text(TEXT[:600]), text("hi")
    pl, ps = (SamplingParams(max_tokens=n, ignore_eos=True, **GREEDY) for n in (4, 64))
    e = Engine(gm, max_batch=4, prefill_chunk=0)
    e.kv_cache_bytes = 2 * max(len(long.input_ids) + 4, len(short.input_ids) + 64) * e.kv_token_bytes  # both fit
    peak = [0]

    def measure():
        caches = [e._batch] + [r.pf["cache"] for r in e._prefilling if r.pf]
        n = sum(t.untyped_storage().nbytes() for c in caches if c is not None for lay in c.layers
                for t in (lay._k, lay._v) if t is not None)
        peak[0] = max(peak[0], n)

    e.on_step = measure
    done = threading.Semaphore(0)
    reqs = [e.submit(p, sp, lambda ev: done.release() if ev["type"] in ("done", "error") else None)
            for p, sp in ((long, pl), (short, ps))]
    e.start()
    try:
        for _ in reqs:
            assert done.acquire(timeout=120)
        assert [r.finish_reason for r in reqs] == ["length", "length"]
        assert e.steps["decode_rows"] > e.steps["decode"]  # they decoded together
        assert 0 < peak[0] <= e.kv_cache_bytes
    finally:
        e.shutdown()


def test_a_batch_whose_room_is_used_up_is_rebuilt(gm, monkeypatch):
    """Past its room (the fewest tokens a row has left, at most DECODE_RESERVE) the batch cache is rebuilt, and
    the requests answer with generate's greedy tokens."""
    import glyph_rt.serve.engine as engine_module

    monkeypatch.setattr(engine_module, "DECODE_RESERVE", 3)
    e = Engine(gm, max_batch=4, cache_bytes=0).start()
    try:
        refs = [gm.generate(c, q, max_new_tokens=n)[0].token_ids for c, q, n in zip(CONTEXTS, QUESTIONS, (12, 14))]
        rebuild, rebuilds = e._rebuild, []
        monkeypatch.setattr(e, "_rebuild", lambda: rebuilds.append(len(e.running)) or rebuild())
        out, threads = {}, []
        for i in range(2):
            p = prompt(gm, e, CONTEXTS[i], QUESTIONS[i], cache=False)
            threads.append(threading.Thread(target=lambda i=i, p=p: out.setdefault(
                i, e.complete(p, SamplingParams(max_tokens=12 + 2 * i, **GREEDY)).token_ids)))
            threads[-1].start()
        for t in threads:
            t.join(120)
        assert [out[0], out[1]] == refs
        assert len(rebuilds) >= 4  # every 3 tokens, not only when a request joins or leaves
    finally:
        e.shutdown()


def test_a_stop_string_split_inside_a_character_is_never_streamed(gm):
    """The streamed deltas hold back what a stop string may start with, counted without a character still half
    decoded: '停止' whose last character comes in two tokens streams nothing of it."""
    from glyph_rt.serve.engine import Request
    from glyph_rt.serve.inputs import Prompt

    e = Engine(gm)
    ids = gm.tokenizer.encode("中文中文停止后面", add_special_tokens=False)
    for stop in (["停止"], []):
        events = []
        r = Request(Prompt([1, 2, 3], [], 0, None), SamplingParams(max_tokens=100, stop=stop), events.append)
        r.length = 3
        for t in ids:
            if not r.finished:
                e._accept(r, t)
        if not r.finished:
            e._finish(r, "length")
        streamed = "".join(ev["text"] for ev in events if ev["type"] == "delta")
        assert streamed == r.text == ("中文中文" if stop else "中文中文停止后面"), (stop, streamed)


def test_a_failed_step_fails_its_requests_and_the_engine_goes_on(gm, monkeypatch, caplog):
    """An exception no request's guard catches (here: the document cache failing on a page's embeddings) fails the
    requests in flight with a 500, and the engine serves the next request; /health follows the engine's thread."""
    from glyph_rt.serve.service import ChatService

    e = Engine(gm, cache_bytes=1 << 20).start()
    try:
        assert ChatService(e, InputOptions(CFG, "tiny")).healthy
        put = e.cache.put

        def failing_put(key, entry):
            if key.startswith("doc:"):
                raise RuntimeError("CUDA out of memory (simulated)")
            return put(key, entry)

        monkeypatch.setattr(e.cache, "put", failing_put)
        params = SamplingParams(max_tokens=4, **GREEDY)
        with pytest.raises(RequestError, match="the engine failed: RuntimeError: CUDA out of memory") as err:
            e.complete(prompt(gm, e, CONTEXTS[3], QUESTIONS[3], cache=False), params)
        assert err.value.status == 500 and e.alive and not e.running and e._batch is None
        monkeypatch.setattr(e.cache, "put", put)
        assert len(e.complete(prompt(gm, e, CONTEXTS[3], QUESTIONS[3], cache=False), params).token_ids) == 4
        assert any("an engine step failed" in r.getMessage() for r in caplog.records)
    finally:
        e.shutdown()
    assert not e.alive and not ChatService(e, InputOptions(CFG, "tiny")).healthy


def test_sampling_limits_tiny_temperatures_and_seeds(gm, engine):
    p = prompt(gm, engine, CONTEXTS[0], QUESTIONS[0])
    greedy = engine.complete(p, SamplingParams(max_tokens=6, **GREEDY))
    assert engine.complete(p, SamplingParams(max_tokens=6, temperature=1e-40)).token_ids == greedy.token_ids
    for seed in (2**64, -2**63 - 1, 1.5):
        with pytest.raises(RequestError, match=r"^seed: .* must be an integer in \[-2\^63, 2\^64\)"):
            engine.submit(p, SamplingParams(seed=seed), lambda ev: None)
    assert len(engine.complete(p, SamplingParams(max_tokens=2, temperature=1.0, seed=2**64 - 1)).token_ids) == 2
    assert engine._batch is None and not engine.running  # the batch's KV went with its last request


def test_a_corrupt_image_is_a_bad_request_whatever_pil_raises():
    """PIL raises SyntaxError, struct.error, ... as well as OSError on a damaged file: each is a 400 naming it."""
    import io
    import random

    from PIL import Image

    from glyph_rt.serve.inputs import _decode_image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 10, 10)).save(buf, "PNG")
    rng = random.Random(0)
    for _ in range(300):
        b = bytearray(buf.getvalue())
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        if rng.random() < 0.3:
            b = b[:rng.randrange(len(b))]
        try:
            _decode_image(bytes(b), "messages[0].content[0].image_url.url")
        except RequestError as e:
            assert "not a readable image" in str(e) or "too large" in str(e)
