"""The rendering search: operators and repair, convergence on a synthetic objective with a known
optimum, an LLM critic served over real HTTP, resume after a real kill, no config evaluated twice."""
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from glyph_rt.render.config import RenderConfig
from glyph_rt.search import (Critic, History, Rejected, Search, SearchError, SearchSpace, SyntheticObjective, check,
                             config_hash, crossover, load_settings, mutate, run_search, tournament)
from glyph_rt.train.styles import check_rules

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def space():
    return SearchSpace()


class Counting(SyntheticObjective):
    """The synthetic objective, remembering every config it was asked to score."""

    def __init__(self, floor=0.5, fail_on=None):
        super().__init__(floor)
        self.seen = []
        self.fail_on = fail_on

    def __call__(self, config):
        self.seen.append(config_hash(config))
        if self.fail_on is not None and self.fail_on(config):
            raise RuntimeError("model crashed")
        return super().__call__(config)


# ----------------------------------------------------------------- operators
def test_genome_round_trip_and_mutation_stays_in_range(space):
    rng = random.Random(0)
    g = space.genome(space.sampler(0))
    g2, config = check(space, g, Counter())
    assert space.genome(config) == g2
    for _ in range(200):
        g = mutate(space, g, rng)
        for name, gene in space.genes.items():
            if gene.kind in ("num", "int"):
                assert gene.lo <= g[name] <= gene.hi, name
            elif gene.kind == "choice":
                assert g[name] in gene.choices
    a, b = space.genome(space.sampler(1)), space.genome(space.sampler(2))
    child = crossover(space, a, b, rng)
    assert all(child[n] in (a[n], b[n]) for n in space.genes)
    assert (child["font_size"], child["line_height_delta"]) in {(a["font_size"], a["line_height_delta"]),
                                                                 (b["font_size"], b["line_height_delta"])}
    ranked = list(range(10))
    picks = Counter(tournament(ranked, rng, 3) for _ in range(2000))
    assert picks[0] > picks[5] > picks[9]  # the better ranked, the more often picked


def test_check_repairs_and_rejects_with_reasons(space):
    base = space.genome(space.sampler(0))
    counts = Counter()
    g, config = check(space, {**base, "margin_x": 500, "font_size": 7, "dpi": 45}, counts)
    assert g["margin_x"] == space.genes["margin_x"].hi
    assert config.font_size * config.dpi / 72 >= space.rules["min_glyph_px"]  # dpi raised
    assert counts["repaired.margin_x_range"] == 1 and counts["repaired.glyphs_too_small"] == 1
    assert check_rules(config, space.rules) is None
    with pytest.raises(Rejected) as e:
        check(space, {**base, "colors": "#FFFFFF/#FFFFFF/#EEEEEE"}, counts)
    assert e.value.reason == "low_contrast"
    with pytest.raises(Rejected) as e:
        check(space, {**base, "margin_x": 500}, counts, repair=False)
    assert e.value.reason == "out_of_range"
    with pytest.raises(Rejected) as e:
        check(space, {**base, "font": "NoSuchFont.ttf"}, counts)
    assert e.value.reason == "bad_value"


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 10_000), st.floats(0.0, 1.0), st.floats(0.01, 1.0))
def test_children_are_valid_or_rejected_with_a_reason(i, j, rate, sigma):
    space = _SPACE
    rng = random.Random(i * 10_007 + j)
    child = mutate(space, crossover(space, space.genome(space.sampler(i)), space.genome(space.sampler(j)), rng),
                   rng, rate, sigma)
    counts = Counter()
    try:
        g, config = check(space, child, counts)
    except Rejected as e:
        assert e.reason in ("low_contrast", "no_text_area", "glyphs_too_small", "over_model_pixel_budget",
                            "page_over_pixel_limit", "invalid_config", "unrepairable")
        return
    assert check_rules(config, space.rules) is None
    assert all(gene.lo <= g[n] <= gene.hi for n, gene in space.genes.items() if gene.kind in ("num", "int"))
    assert config_hash(space.to_config(g)) == config_hash(config)


_SPACE = SearchSpace()


# ----------------------------------------------------------------- convergence
def test_ga_converges_to_the_known_optimum(tmp_path):
    obj = Counting(floor=0.5)
    s = load_settings(None, ["generations=60", "max_evaluations=400", "patience=10"])
    r = run_search(s, obj, tmp_path, report=False)
    hmin = SearchSpace().genes["horizontal_scale"].lo
    assert r.best["accuracy"] >= 0.5
    assert r.best["compression"] >= 0.99 * obj.optimum(hmin)
    assert r.evaluations <= 400
    assert len(obj.seen) == len(set(obj.seen)) == r.evaluations  # no config evaluated twice


def test_pareto_mode_and_outputs(tmp_path):
    obj = Counting(fail_on=lambda c: c.dpi > 200)
    s = load_settings(None, ["generations=3", "objective.mode=pareto", "outputs.contact_sheet=3"])
    r = run_search(s, obj, tmp_path)
    assert r.stop_reason == "generations" and r.generations == 3
    accs = [e["accuracy"] for e in r.front]
    comps = [e["compression"] for e in r.front]
    assert comps == sorted(comps) and accs == sorted(accs, reverse=True)  # a real front
    for f in ("best_config.json", "best_config_glyph.json", "pareto.png", "best_per_generation.md",
              "contact_sheet.png", "summary.json"):
        assert (tmp_path / f).stat().st_size > 0, f
    best = RenderConfig.load(tmp_path / "best_config.json")
    assert config_hash(best) == r.best["hash"]
    glyph = json.loads((tmp_path / "best_config_glyph.json").read_text())
    assert glyph["dpi"] == best.dpi and "page-size" in glyph
    back = RenderConfig.load(tmp_path / "best_config_glyph.json")  # Glyph's format reads back to the same style
    for k in ("page_size", "dpi", "font_size", "line_height", "horizontal_scale", "margin_x", "margin_y", "alignment",
              "font_color", "page_bg_color", "space_before", "space_after", "border_width", "newline_markup"):
        assert getattr(back, k) == getattr(best, k), k
    table = (tmp_path / "best_per_generation.md").read_text()
    assert table.count("\n") == 2 + 4
    failed = [e for e in History(tmp_path / "history.jsonl").of_type("eval") if e.get("error")]
    assert r.counts["failed"] == len(failed) and all(e["accuracy"] is None for e in failed)


def test_settings_errors(tmp_path):
    with pytest.raises(SearchError, match="unknown key 'popuation'"):
        load_settings(None, ["popuation=3"])
    with pytest.raises(SearchError, match="objective.mode"):
        load_settings(None, ["objective.mode=best"])
    with pytest.raises(SearchError, match="critic.model"):
        load_settings(None, ["critic.base_url=http://127.0.0.1:1/v1"])
    run_search(load_settings(None, ["generations=0"]), Counting(), tmp_path, report=False)
    with pytest.raises(SearchError, match="another search"):
        run_search(load_settings(None, ["generations=0", "seed=3"]), Counting(), tmp_path, report=False)


# ----------------------------------------------------------------- the critic over HTTP
class FixedChatServer:
    """An OpenAI-compatible chat endpoint on 127.0.0.1 answering every request with `self.content`."""

    def __init__(self):
        from fastapi import FastAPI

        from glyph_rt.serve.app import ServerThread

        self.requests, self.content = [], ""
        app = FastAPI()

        @app.post("/v1/chat/completions")
        def chat(body: dict):
            self.requests.append(body)
            return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": self.content}}]}

        self.live = ServerThread(app).__enter__()  # raises if it does not start
        self.port = self.live.port

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/v1"


@pytest.fixture(scope="module")
def chat_server():
    s = FixedChatServer()
    yield s
    s.live.__exit__(None, None, None)


PROPOSALS = [
    {"op": "mutate", "parent": "c1", "changes": {"font_size": 7.5, "horizontal_scale": 0.75},
     "reason": "smaller glyphs"},
    {"op": "crossover", "parents": ["c1", "c2"], "take_from_second": ["dpi"], "changes": {"line_height_delta": 0},
     "reason": "c2's dpi with tight lines"},
    {"op": "mutate", "parent": "c2", "changes": {"margin_x": 500}, "reason": "out of range: clipped"},
    {"op": "mutate", "parent": "c1", "changes": {"kerning": 2}, "reason": "no such gene"},
    {"op": "mutate", "parent": "c1", "changes": {"colors": "#FFFFFF/#FFFFFF/#F0F0F0"}, "reason": "too faint"},
    "make it smaller",
    {"op": "mutate", "parent": "c1", "changes": {"dpi": 60}},
    {"op": "mutate", "parent": "c99", "changes": {"dpi": 60}, "reason": "no such parent"},
    {"op": "explode", "parent": "c1", "reason": "unknown op"},
    {"op": "mutate", "parent": "c1", "changes": {"dpi": "many"}, "reason": "not a number"},
]


def test_critic_proposals_applied_rejected_counted_never_evaluated(chat_server, tmp_path):
    chat_server.content = "Here you go:\n```json\n" + json.dumps({"proposals": PROPOSALS}) + "\n```"
    n0 = len(chat_server.requests)
    obj = Counting()
    s = load_settings(None, ["generations=1", "offspring=4", "critic.model=fixed", f"critic.base_url={chat_server.url}",
                             "critic.max_proposals=10"])
    critic = Critic(chat_server.url, "fixed", timeout=10)
    r = run_search(s, obj, tmp_path, critic=critic, report=False)
    assert len(chat_server.requests) == n0 + 1  # asked once, for generation 1
    user = chat_server.requests[-1]["messages"][-1]["content"]
    assert "id|acc|comp|dpi|" in user and "\nc1|" in user and "maximise compression" in user
    c = r.counts
    assert c["critic.accepted"] == 3 and c["critic.repaired.margin_x_range"] == 1
    for reason in ("unknown_gene", "low_contrast", "malformed", "no_reason", "unknown_parent", "unknown_op",
                   "bad_value"):
        assert c[f"critic.rejected.{reason}"] == 1, reason
    evals = History(tmp_path / "history.jsonl").of_type("eval")
    by_critic = [e for e in evals if e["proposer"] == "critic"]
    assert len(by_critic) == 3 and {e["reason"] for e in by_critic} == {
        "smaller glyphs", "c2's dpi with tight lines", "out of range: clipped"}
    assert [e["genome"]["margin_x"] for e in by_critic if e["reason"].startswith("out")] == [40.0]
    assert all(e["genome"]["colors"] != "#FFFFFF/#FFFFFF/#F0F0F0" for e in evals)
    assert len(obj.seen) == len(set(obj.seen)) == len(evals)  # only valid, new configs were scored
    gen1 = [e for e in evals if e["generation"] == 1]
    assert len(gen1) == 4  # 3 from the critic, 1 from the operators


def test_critic_failure_falls_back_to_operators(chat_server, tmp_path):
    chat_server.content = "I would make the font smaller."  # no JSON
    s = load_settings(None, ["generations=2", "critic.model=fixed", f"critic.base_url={chat_server.url}"])
    r = run_search(s, Counting(), tmp_path / "a", critic=Critic(chat_server.url, "fixed", timeout=10), report=False)
    assert r.counts["critic.failed"] == 2 and r.evaluations == 8 * 3
    with socket.socket() as sk:  # a port nobody listens on
        sk.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sk.getsockname()[1]}/v1"
    s = load_settings(None, ["generations=1", "critic.model=fixed", f"critic.base_url={dead}"])
    r = run_search(s, Counting(), tmp_path / "b", critic=Critic(dead, "fixed", timeout=2), report=False)
    assert r.counts["critic.failed"] == 1 and r.evaluations == 16
    assert "Connection" in History(tmp_path / "b" / "history.jsonl").of_type("critic")[0]["error"]


# ----------------------------------------------------------------- resume
def _records(path):
    out = []
    for r in History(path).records:
        r = {k: v for k, v in r.items() if k != "seconds"}
        out.append(r)
    return out


def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path):
    args = ["generations=4", "patience=0", "evaluator.delay=0.05", "outputs.contact_sheet=0", "--quiet"]
    cmd = [sys.executable, "-m", "glyph_rt.cli", "search"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    full = tmp_path / "full"
    subprocess.run([*cmd, "--out", str(full), *args], check=True, env=env, capture_output=True, timeout=120)
    killed = tmp_path / "killed"
    p = subprocess.Popen([*cmd, "--out", str(killed), *args], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    hist = killed / "history.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline:  # kill it in generation 1 or 2, mid-generation
        if hist.exists() and hist.read_text().count('"type": "eval"') >= 13:
            break
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    partial = hist.read_text().count('"type": "eval"')
    assert 13 <= partial < 40, "the run was not killed mid-way"
    r = subprocess.run([*cmd, "--out", str(killed), *args], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    a, b = _records(full / "history.jsonl"), _records(hist)
    assert a == b  # the same records in the same order: nothing lost, nothing evaluated twice
    hashes = [x["hash"] for x in b if x["type"] == "eval"]
    assert len(hashes) == len(set(hashes)) == 40
    assert (full / "best_config.json").read_text() == (killed / "best_config.json").read_text()


def test_resume_replays_the_critic_and_scores_nothing_twice(chat_server, tmp_path):
    chat_server.content = json.dumps({"proposals": PROPOSALS[:3]})
    settings = load_settings(None, ["generations=3", "patience=0", "critic.model=fixed",
                                    f"critic.base_url={chat_server.url}"])

    class Interrupt(Counting):
        def __call__(self, config):
            if len(self.seen) == 20:
                raise KeyboardInterrupt
            return super().__call__(config)

    first = Interrupt()
    with pytest.raises(KeyboardInterrupt):
        Search(settings, first, tmp_path, Critic(chat_server.url, "fixed")).run()
    asked = len(chat_server.requests)
    chat_server.content = "garbage now"  # a replayed generation must not ask again
    second = Counting()
    r = Search(settings, second, tmp_path, Critic(chat_server.url, "fixed")).run()
    assert not set(first.seen) & set(second.seen)
    assert len(first.seen) + len(second.seen) == r.evaluations
    assert len(chat_server.requests) - asked == 1  # only generation 3 (gens 1-2 were logged before the interrupt)


# ----------------------------------------------------------------- real objectives
def test_legibility_objective_measures_compression_and_legibility():
    from glyph_rt.render.pages import render
    from glyph_rt.render.tokens import get_tokenizer, visual_tokens
    from glyph_rt.search.legibility import LegibilityObjective

    obj = LegibilityObjective(chars=4000, max_glyphs=400)
    big = RenderConfig(font_size=12, line_height=14, dpi=100)
    small = RenderConfig(font_size=6, line_height=6, dpi=60, horizontal_scale=0.75)
    a, b = obj(big), obj(small)
    assert a.accuracy > 0.9 > 0.5 > b.accuracy  # 16.7 px glyphs read, 5 px squeezed ones do not
    assert b.compression > 3 * a.compression
    pages = render(obj.text, big)
    want = get_tokenizer(None).count(obj.text) / sum(visual_tokens([im.shape[1::-1] for im in pages.images]))
    assert a.compression == pytest.approx(want)


def test_eval_objective_runs_the_harness_with_a_tiny_checkpoint(tmp_path):
    from glyph_rt.eval import Item, make_target
    from glyph_rt.models.tiny import tiny_glm4v_checkpoint
    from glyph_rt.search import EvalObjective

    target = make_target(str(tiny_glm4v_checkpoint(tmp_path / "ckpt")), device="cpu")
    items = [Item(id=f"q{i}", context=f"The magic number of item {i} is {1000 + i}. " * 8,
                 question="What is the magic number?", answers=[str(1000 + i)], max_new_tokens=2) for i in range(2)]
    obj = EvalObjective(items, target, out=tmp_path / "rows", concurrency=2)
    with pytest.raises(ValueError, match="evaluator.concurrency"):
        EvalObjective(items, target, concurrency=0)
    s = load_settings(None, ["population=2", "offspring=1", "generations=1", "styles=" + str(_small_pages(tmp_path))])
    r = run_search(s, obj, tmp_path / "search", report=False)
    evals = History(tmp_path / "search" / "history.jsonl").of_type("eval")
    assert r.evaluations == len(evals) == 3 and not any(e.get("error") for e in evals)
    assert all(0 <= e["accuracy"] <= 1 and e["compression"] > 0 for e in evals)
    assert len(list((tmp_path / "rows").glob("*.jsonl"))) == 3  # the harness's rows, one file per config
    # no item answered (each too long for the model's window): no compression to score, not a TypeError
    failing = [Item(id="long", context="The magic number is 7. " * 8, question="What is the magic number?",
                    answers=["7"], max_new_tokens=10 ** 6)]
    score = EvalObjective(failing, target)(r.config)
    assert score.accuracy == 0 and math.isnan(score.compression) and score.extra["errors"] == 1


def _small_pages(tmp_path):
    """A styles file drawing small pages only (fast for a tiny model on the CPU)."""
    p = tmp_path / "styles.yaml"
    p.write_text("dpi: {lowest: {weight: 1, range: [45, 59]}, low: {weight: 0, range: [60, 71]}, medium: {weight: 0, "
                 "range: [72, 119]}, normal: {weight: 0, values: [72]}, high: {weight: 0, range: [301, 400]}}\n"
                 "page_size: {paper: {weight: 0}, aspect: {weight: 0}, random: {weight: 1, width: [300, 320], "
                 "segments: [[0.6, 1.0, 1]]}}\nfont_size: {range: [10, 14]}\n")
    return p


def test_overrides_may_follow_options(tmp_path, capsys):
    from glyph_rt.cli import main

    assert main(["search", "--out", str(tmp_path), "generations=0", "--quiet", "population=3",
                 "outputs.contact_sheet=0"]) == 0
    assert json.loads((tmp_path / "summary.json").read_text())["settings"]["population"] == 3
    capsys.readouterr()
    assert main(["search", "--out", str(tmp_path / "b"), "generations=0", "--quiet", "oops"]) == 2
    assert "override 'oops': use key=value" in capsys.readouterr().err  # refused wherever it stands
    with pytest.raises(SystemExit) as e:  # an unknown option still is argparse's error
        main(["search", "--out", str(tmp_path / "b"), "a=1", "--ouut", "x"])
    assert e.value.code == 2 and "unrecognized arguments: --ouut x" in capsys.readouterr().err


def test_a_plot_left_out_without_matplotlib_is_said_and_recorded(tmp_path, capsys, monkeypatch):
    from glyph_rt.cli import main

    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    assert main(["search", "--out", str(tmp_path), "generations=0", "--quiet", "outputs.contact_sheet=0"]) == 0
    err = capsys.readouterr().err
    assert "skipped pareto.png: the Pareto plot needs matplotlib: pip install 'glyph_rt[plots]'" in err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary["skipped"]) == ["pareto.png"] and not (tmp_path / "pareto.png").exists()


def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys):
    from glyph_rt.cli import main

    assert main(["search", "--out", str(tmp_path / "a"), "popuation=3"]) == 2
    assert main(["search", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert main(["search", "--out", str(tmp_path / "a"), "evaluator.kind=magic"]) == 2
    assert main(["search", "--out", str(tmp_path / "a"), "evaluator.kind=eval"]) == 2
    assert main(["search", "--out", str(tmp_path / "a"), "evaluator.kind=eval", "evaluator.target=x",
                 "evaluator.items=a.jsonl", "evaluator.ruler={n: 1}"]) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("objective: [1, 2]\n")
    assert main(["search", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'popuation'" in err and "does not exist" in err and "'magic'" in err
    assert "'objective' must be a mapping" in err and "Traceback" not in err
    assert "kind eval needs target" in err and "either items (a JSONL file) or ruler" in err
    assert main(["search", "--out", str(tmp_path / "ok"), "generations=1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "stopped (generations) after 2 generations, 16 configs evaluated" in out


# ----------------------------------------------------------------- edge cases: reruns, styles files, presets, answers
def test_legibility_references_ignore_the_newline_markup():
    import dataclasses

    from glyph_rt.search.legibility import LegibilityObjective

    obj = LegibilityObjective(chars=3000, max_glyphs=300)
    big = RenderConfig(font_size=12, line_height=14, dpi=100)
    plain = obj(big).accuracy
    for marker in (" ¶ ", ' &lt;br&gt; '):  # newlines become inline markers in the text, not in the references
        assert obj(dataclasses.replace(big, newline_markup=marker)).accuracy > plain - 0.05 > 0.85, marker


def test_rerun_after_a_budget_stop_replays_and_ends_once(tmp_path):
    s = load_settings(None, ["max_evaluations=20", "generations=10", "patience=0"])
    first = run_search(s, Counting(), tmp_path / "a", report=False)
    assert (first.stop_reason, first.generations, first.evaluations) == ("evaluations", 2, 20)
    again = Counting()
    second = run_search(s, again, tmp_path / "a", report=False)
    assert (second.stop_reason, second.generations, second.evaluations) == ("evaluations", 2, 20) and not again.seen
    hist = tmp_path / "a" / "history.jsonl"
    assert [r["generations"] for r in History(hist).of_type("end")] == [2]
    # a kill after the last evaluation, before its generation's record: the resume writes that record
    lines = hist.read_text().splitlines()
    cut = max(i for i, line in enumerate(lines) if '"type": "generation"' in line)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "history.jsonl").write_text("\n".join(lines[:cut]) + "\n")
    third = run_search(s, Counting(), tmp_path / "b", report=False)
    assert (third.stop_reason, third.generations, third.evaluations) == ("evaluations", 2, 20)
    assert _records(tmp_path / "b" / "history.jsonl") == _records(hist)


def test_proposals_with_non_string_gene_names_are_malformed(chat_server, tmp_path, space):
    from glyph_rt.search.critic import proposal_genome

    parents = {"c1": space.genome(space.sampler(0)), "c2": space.genome(space.sampler(1))}
    for p in ({"op": "crossover", "parents": ["c1", "c2"], "take_from_second": [["dpi"]], "reason": "x"},
              {"op": "crossover", "parents": ["c1", "c2"], "take_from_second": [{"gene": "dpi"}], "reason": "x"},
              {"op": "mutate", "parent": "c1", "changes": {("dpi",): 72}, "reason": "x"}):
        with pytest.raises(Rejected) as e:
            proposal_genome(space, p, parents)
        assert e.value.reason == "malformed"
    chat_server.content = json.dumps({"proposals": [
        {"op": "crossover", "parents": ["c1", "c2"], "take_from_second": [{"gene": "dpi"}], "reason": "x"},
        {"op": "mutate", "parent": "c1", "changes": {"font_size": 8}, "reason": "smaller"}]})
    s = load_settings(None, ["generations=1", "critic.model=fixed", f"critic.base_url={chat_server.url}"])
    for _ in range(2):  # the logged answer is replayed by the rerun without a crash
        r = run_search(s, Counting(), tmp_path, critic=Critic(chat_server.url, "fixed", timeout=10), report=False)
        assert r.counts["critic.rejected.malformed"] == 1 and r.counts["critic.accepted"] == 1


def test_styles_file_is_known_by_its_content(tmp_path, monkeypatch):
    styles = _small_pages(tmp_path)
    monkeypatch.chdir(tmp_path)
    args = ["population=2", "offspring=2", "generations=1"]
    run_search(load_settings(None, [*args, "styles=styles.yaml"]), Counting(), tmp_path / "out", report=False)
    monkeypatch.chdir(ROOT)  # another cwd, an absolute path: the same search
    r = run_search(load_settings(None, [*args, f"styles={styles}"]), Counting(), tmp_path / "out", report=False)
    assert r.generations == 1
    header = History(tmp_path / "out" / "history.jsonl").header["settings"]["styles"]
    assert header["path"] == str(styles.resolve()) and len(header["sha256"]) == 64
    styles.write_text(styles.read_text().replace("[10, 14]", "[10, 12]"))
    with pytest.raises(SearchError, match="styles.*content sha256"):
        run_search(load_settings(None, [*args, f"styles={styles}"]), Counting(), tmp_path / "out", report=False)


def test_styles_path_of_an_older_history_resumes(tmp_path, monkeypatch):
    """A history written before the content hash holds settings.styles as a path: the same file resumes it."""
    styles = _small_pages(tmp_path)
    other = tmp_path / "other.yaml"
    other.write_text(styles.read_text())
    monkeypatch.chdir(tmp_path)
    args = ["population=2", "offspring=2", "generations=1"]
    run_search(load_settings(None, [*args, "styles=styles.yaml"]), Counting(), tmp_path / "out", report=False)
    path = tmp_path / "out" / "history.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines[0]["type"] == "header"
    lines[0]["settings"]["styles"] = "styles.yaml"  # as older versions wrote it
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(SearchError, match="styles: 'styles.yaml' -> .*other.yaml"):  # another file: refused
        run_search(load_settings(None, [*args, f"styles={other}"]), Counting(), tmp_path / "out", report=False)
    r = run_search(load_settings(None, [*args, "generations=2", f"styles={styles}"]), Counting(), tmp_path / "out",
                   report=False)
    assert r.generations == 2


def test_presets_are_evaluated_as_they_are(tmp_path, space):
    names = ["glyph", "code_style", "artistic_pixel"]  # snap 0, wrap word, 1 sub-pixel phase: no genes of theirs
    obj = Counting()
    s = load_settings(None, ["generations=0", "operators.repair=false", "outputs.contact_sheet=2",
                             f"presets=[{', '.join(names)}]"])
    run_search(s, obj, tmp_path)
    evals = {e["proposer"]: e for e in History(tmp_path / "history.jsonl").of_type("eval")}
    for name in names:
        e, preset = evals[f"preset:{name}"], RenderConfig.preset(name)
        assert e["hash"] == config_hash(preset) and e["config"] == preset.to_dict()
        assert config_hash(space.config_of(e)) == e["hash"]
    assert {config_hash(RenderConfig.preset(n)) for n in names} <= set(obj.seen)
    a3 = RenderConfig(page_size="A3")  # a real paper size at the page_width range's end passes without repair
    g, config = check(space, space.genome(a3), Counter(), repair=False)
    assert g["page_width"] == 842.0 and space.genes["page_width"].hi >= a3.page_size[0]


def test_parse_answer_skips_thoughts_with_only_a_closing_tag():
    from glyph_rt.search.critic import parse_answer

    draft = json.dumps({"proposals": [{"op": "mutate", "parent": "c1", "changes": {"dpi": 45}, "reason": "draft"}]})
    final = json.dumps({"proposals": [{"op": "mutate", "parent": "c2", "changes": {"font_size": 8},
                                       "reason": "final"}]})
    text = f"First idea: {draft}, but dpi 45 is too small...\n</think>\n\n{final}"
    assert [p["reason"] for p in parse_answer(text)] == ["final"]
    assert [p["reason"] for p in parse_answer("<think>" + text)] == ["final"]
    assert [p["reason"] for p in parse_answer(f"{draft}\nOn second thought:\n{final}")] == ["final"]


def test_a_cut_off_response_is_a_counted_critic_failure(tmp_path):
    from glyph_rt.search import CriticError

    from conftest import http_endpoint

    with http_endpoint(lambda body: (200, b'{"choices": [', {})) as url:  # a 200 whose JSON body was cut short
        critic = Critic(url, "m", timeout=5, max_retries=0)
        with pytest.raises(CriticError, match="unreadable response"):
            critic.ask([{"role": "user", "content": "hi"}])
        s = load_settings(None, ["generations=1", "critic.model=m", f"critic.base_url={url}"])
        r = run_search(s, Counting(), tmp_path, critic=critic, report=False)
        assert r.counts["critic.failed"] == 1 and r.evaluations == 16


def test_critic_max_tokens_is_a_setting_and_a_context_refusal_says_to_lower_it(tmp_path):
    from glyph_rt.search import CriticError
    from glyph_rt.search.loop import make_critic

    from conftest import chat_completion, http_endpoint

    for bad in ("0", "many", "true", "2.5"):
        with pytest.raises(SearchError, match="critic.max_tokens"):
            load_settings(None, [f"critic.max_tokens={bad}"])
    assert load_settings()["critic"]["max_tokens"] == 2048
    sent = []

    def respond(body):
        sent.append(json.loads(body)["max_tokens"])
        if sent[-1] <= 256:
            return 200, chat_completion('{"proposals": []}'), {}
        msg = (f"this request needs {2078 - 2048 + sent[-1]} positions (2078 prompt tokens ...), over the model's "
               "context of 4096; lower max_tokens")  # glyph_rt's server
        err = {"message": msg, "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}
        return 400, json.dumps({"error": err}).encode(), {}

    with http_endpoint(respond) as url:
        s = load_settings(None, ["critic.model=m", f"critic.base_url={url}", "critic.max_tokens=4000"])
        with pytest.raises(CriticError, match=r"critic.max_tokens=4000 does not fit .*lower critic.max_tokens"):
            make_critic(s).ask([{"role": "user", "content": "hi"}])
        s = load_settings(None, ["critic.model=m", f"critic.base_url={url}", "critic.max_tokens=256"])
        assert make_critic(s).ask([{"role": "user", "content": "hi"}]) == '{"proposals": []}'
    assert sent == [4000, 256]


def test_api_keys_are_never_written_to_the_outputs(tmp_path, capsys):
    from glyph_rt.cli import main
    from glyph_rt.eval import Item, save_items

    from conftest import chat_completion, http_endpoint

    save_items([Item(id="a", context="The code is 4711. " * 20, question="Code?", answers=["4711"],
                     max_new_tokens=4)], tmp_path / "items.jsonl")
    with http_endpoint(lambda body: (200, chat_completion("4711"), {})) as url:
        assert main(["search", "--out", str(tmp_path / "out"), "--quiet", "generations=0", "population=1",
                     "outputs.contact_sheet=0", "evaluator.kind=eval", f"evaluator.target=openai:{url}:m",
                     f"evaluator.items={tmp_path / 'items.jsonl'}", "evaluator.api_key=sk-SECRET-123"]) == 0
    capsys.readouterr()
    for f in (tmp_path / "out").iterdir():
        assert "SECRET" not in f.read_bytes().decode("utf-8", "replace"), f.name
    settings = json.loads((tmp_path / "out" / "summary.json").read_text())["settings"]
    assert settings["evaluator"]["api_key"] == "***" and settings["critic"]["api_key_env"] == "OPENAI_API_KEY"
    assert settings["evaluator"]["target"] == f"openai:{url}:m"


def test_numpy_extras_are_stored_and_non_finite_scores_are_failures(tmp_path):
    import numpy as np

    class Odd(Counting):
        def __call__(self, config):
            score = super().__call__(config)
            score.extra.update(px=np.float32(score.extra["glyph_px"]), hist=np.arange(3), obj=object())
            if config.dpi % 3 == 0:
                score.accuracy = float("nan")
            return score

    r = run_search(load_settings(None, ["generations=2", "patience=0"]), Odd(), tmp_path, report=False)
    evals = History(tmp_path / "history.jsonl").of_type("eval")
    ok = [e for e in evals if not e.get("error")]
    assert ok and all(type(e["extra"]["px"]) is float and e["extra"]["hist"] == [0, 1, 2] for e in ok)
    nan = [e for e in evals if e.get("error")]
    assert nan and all(e["accuracy"] is None and "finite" in e["error"] for e in nan)
    assert r.counts["failed"] == len(nan) and all(e["accuracy"] == e["accuracy"] for e in r.front)


def test_settings_are_checked_up_front_and_the_best_says_if_it_is_feasible(tmp_path):
    for override, key in (("evaluator.chars=1e4", "evaluator.chars"), ("evaluator.delay=[1]", "evaluator.delay"),
                          ("critic.timeout=fast", "critic.timeout"), ("evaluator.blur=null", "evaluator.blur"),
                          ("objective.floor=90", r"objective.floor: 90 must be in \[0, 1\]")):
        with pytest.raises(SearchError, match=key):
            load_settings(None, [override])
    yaml_file = tmp_path / "s.yaml"
    yaml_file.write_text("evaluator: {kind: eval, target: x, ruler: {tasks: [niah_single_1], lengths: [4096]}}\n")
    s = load_settings(str(yaml_file), ["evaluator.ruler.n=5"])  # maps under evaluator are as open as it is
    assert s["evaluator"]["ruler"] == {"tasks": ["niah_single_1"], "lengths": [4096], "n": 5}

    class Poor(Counting):
        def __call__(self, config):
            score = super().__call__(config)
            score.accuracy *= 0.5
            return score

    r = run_search(load_settings(None, ["generations=0", "objective.floor=0.9"]), Poor(), tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert r.best is not None and r.feasible is False and summary["best"]["feasible"] is False
    r = run_search(load_settings(None, ["generations=0"]), Counting(), tmp_path / "ok", report=False)
    assert r.feasible is True


# ----------------------------------------------------------------- critic resume, the --out lock, outputs checks
class KilledAt(Counting):
    """Interrupted (as by a kill) when asked to score its `at`+1-th config."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def __call__(self, config):
        if len(self.seen) == self.at:
            raise KeyboardInterrupt
        return super().__call__(config)


def _smaller(*sizes):
    return json.dumps({"proposals": [{"op": "mutate", "parent": "c1", "changes": {"font_size": fs},
                                      "reason": "smaller"} for fs in sizes]})


def test_a_failed_critic_is_asked_again_on_resume_only_before_its_generation_has_evaluations(chat_server, tmp_path):
    s = load_settings(None, ["generations=2", "patience=0", "max_evaluations=24", "critic.model=fixed",
                             f"critic.base_url={chat_server.url}"])
    # killed after 6 of generation 1's 8 configs: its failed answer is replayed, the operators draw them again;
    # killed before any (after generation 0's 8): generation 1 asks the critic again
    for at, asked_again in ((14, False), (8, True)):
        out = tmp_path / str(at)
        chat_server.content = "busy, try later"  # no JSON: generation 1's answer fails
        first = KilledAt(at)
        with pytest.raises(KeyboardInterrupt):
            Search(s, first, out, Critic(chat_server.url, "fixed", timeout=10)).run()
        chat_server.content = _smaller(7, 8, 9, 10)  # the critic is back for the resume
        n0, second = len(chat_server.requests), Counting()
        r = Search(s, second, out, Critic(chat_server.url, "fixed", timeout=10)).run()
        hist = History(out / "history.jsonl")
        evals = hist.of_type("eval")
        gen1 = [e for e in evals if e["generation"] == 1]
        assert r.evaluations == len(evals) == hist.of_type("end")[-1]["evaluations"] == 24  # max_evaluations
        assert sorted(e["hash"] for e in gen1) == sorted(hist.generations()[1]["children"])  # none orphaned
        assert not set(first.seen) & set(second.seen)
        assert len(chat_server.requests) - n0 == 1 + asked_again  # generation 2, and 1 when asked again
        assert any(e["proposer"] == "critic" for e in gen1) == asked_again, at


def test_unreadable_critic_answers_are_counted_failures(chat_server, tmp_path, monkeypatch):
    from glyph_rt.search import CriticError, loop
    from glyph_rt.search.critic import parse_answer

    deep = "Sure: " + "[" * 3000
    bigint = _smaller(8).replace("8", "9" * 5000)  # over Python's 4,300 digits for int()
    for text, why in ((deep, "RecursionError"), (bigint, "4300 digits")):
        with pytest.raises(CriticError, match=why):
            parse_answer(text)
    def odd(text):
        raise TypeError("odd")

    s = load_settings(None, ["generations=1", "critic.model=fixed", f"critic.base_url={chat_server.url}"])
    for name, text, why in (("deep", deep, "RecursionError"), ("bigint", bigint, "4300 digits"),
                            ("odd", _smaller(8), "cannot be read: TypeError: odd")):
        if name == "odd":  # whatever reading an answer raises: the operators fill the generation
            monkeypatch.setattr(loop, "parse_answer", odd)
        chat_server.content = text
        r = run_search(s, Counting(), tmp_path / name, critic=Critic(chat_server.url, "fixed", timeout=10),
                       report=False)
        assert r.counts["critic.failed"] == 1 and r.evaluations == 16, name
        rec = History(tmp_path / name / "history.jsonl").of_type("critic")[0]
        assert why in rec["error"] and rec["answer"] == text and rec["proposals"] == []


def test_critic_proposals_stop_at_offspring_and_its_answer_is_stored(chat_server, tmp_path):
    chat_server.content = "Here:\n" + _smaller(7, 8, 9, 10, 11, 12)
    args = ["offspring=2", "critic.model=fixed", f"critic.base_url={chat_server.url}", "critic.max_proposals=6"]
    critic = Critic(chat_server.url, "fixed", timeout=10)
    r = run_search(load_settings(None, ["generations=1", *args]), Counting(), tmp_path, critic=critic, report=False)
    hist = tmp_path / "history.jsonl"
    evals = History(hist).of_type("eval")
    assert [e["proposer"] for e in evals if e["generation"] == 1] == ["critic", "critic"]
    assert r.counts["critic.accepted"] == 2 and r.counts["critic.rejected.over_offspring"] == 4
    assert History(hist).of_type("critic")[0]["answer"] == chat_server.content  # the raw answer
    # a history written before answers were stored resumes, replaying its proposals
    lines = [json.loads(x) for x in hist.read_text().splitlines()]
    hist.write_text("".join(json.dumps({k: v for k, v in x.items() if k != "answer"}) + "\n" for x in lines))
    again = Counting()
    r = run_search(load_settings(None, ["generations=2", *args]), again, tmp_path, critic=critic, report=False)
    assert r.generations == 2 and r.counts["critic.accepted"] == 4 and len(again.seen) == 2


def test_max_proposals_0_never_asks_the_critic(chat_server, tmp_path):
    n0 = len(chat_server.requests)
    s = load_settings(None, ["generations=2", "critic.model=fixed", f"critic.base_url={chat_server.url}",
                             "critic.max_proposals=0"])
    r = run_search(s, Counting(), tmp_path, critic=Critic(chat_server.url, "fixed", timeout=10), report=False)
    assert len(chat_server.requests) == n0 and r.evaluations == 24
    assert not History(tmp_path / "history.jsonl").of_type("critic") and not r.counts.get("critic.failed")


def test_two_runs_cannot_share_an_output_directory(tmp_path, capsys):
    import fcntl

    from glyph_rt.cli import main

    out = tmp_path / "run"
    lock = out / ".lock"

    class Watching(Counting):  # while it runs, another descriptor cannot take the lock, which names this pid
        def __call__(self, config):
            with open(lock, "a+") as other, pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            assert lock.read_text().strip() == str(os.getpid())
            return super().__call__(config)

    assert run_search(load_settings(None, ["generations=0"]), Watching(), out).evaluations == 8
    with open(lock, "a+") as held:  # released: another run takes it (here, as another process would)
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242\n")
        held.flush()
        obj = Counting()
        with pytest.raises(SearchError, match=r"another search is running in .*run \(pid 4242\)"):
            run_search(load_settings(None, ["generations=1"]), obj, out)
        assert not obj.seen and main(["search", "--out", str(out), "--quiet"]) == 2
        assert "another search is running" in capsys.readouterr().err
    assert run_search(load_settings(None, ["generations=1"]), Counting(), out, report=False).evaluations == 16


def test_outputs_settings_are_checked_before_the_search(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    for override, match in (("outputs.contact_sheet=abc", "outputs.contact_sheet: 'abc' must be a whole number"),
                            ("outputs.contact_sheet=-1", "outputs.contact_sheet: -1"),
                            ("outputs.contact_sheet=true", "outputs.contact_sheet: True"),
                            ("outputs.text=/nonexistent", "outputs.text: '/nonexistent' is not a file"),
                            (f"outputs.text={tmp_path}", "is not a file"),
                            (f"outputs.text={bad}", "is not UTF-8 text"),
                            ("outputs.contact_shet=3", "unknown key 'outputs.contact_shet'")):
        with pytest.raises(SearchError, match=match):
            load_settings(None, [override])
    good = tmp_path / "text.txt"
    good.write_text("Lorem ipsum dolor sit amet. " * 50)
    assert load_settings(None, [f"outputs.text={good}", "outputs.contact_sheet=0"])["outputs"]["text"] == str(good)


# ----------------------------------------------------------------- review fixes: base, staircase, repair, overrides
def test_settings_that_are_no_genes_come_from_the_base_config(tmp_path, space):
    """A preset's genome is the preset again (same hash: snap, tab_size, cr_newline and the unrounded page size are
    the base's), and best_config_glyph.json is the config that was scored (summary.json says so); a base whose
    settings Glyph's format cannot hold gets the export's own score in summary.json and a warning."""
    from glyph_rt.render.config import PRESETS
    from glyph_rt.search.legibility import LegibilityObjective

    glyph = RenderConfig.preset("glyph")
    g, config = check(space, space.genome(glyph), Counter(), repair=False)
    assert config_hash(config) == config_hash(glyph) and config.page_size == (595, 842)
    assert (config.snap, config.tab_size, config.cr_newline) == (0, 0, False)
    sampled = space.to_config(check(space, space.genome(space.sampler(3)), Counter())[0])
    assert (sampled.snap, sampled.tab_size, sampled.cr_newline) == (0, 0, False)  # every genome's, not only the base's
    for name in PRESETS:  # any preset as the base is its own genome's config
        preset = RenderConfig.preset(name)
        other = SearchSpace(space.sampler, base=preset)
        assert config_hash(other.to_config(other.genome(preset))) == config_hash(preset), name
    a4 = RenderConfig(page_size="A4")  # a paper's size is not rounded to the aspect gene's grid either
    assert space.to_config(space.genome(a4)).page_size == a4.page_size
    with pytest.raises(SearchError, match="base: .*unknown"):
        load_settings(None, ["base=nonesuch"])

    obj = LegibilityObjective(chars=3000, max_glyphs=300)
    args = ["generations=0", "population=2", "presets=[glyph]", "outputs.contact_sheet=0"]
    r = run_search(load_settings(None, args), obj, tmp_path / "glyph")
    summary = json.loads((tmp_path / "glyph" / "summary.json").read_text())
    assert summary["settings"]["base"] == "glyph" and summary["glyph_export"] == {"same_config": True}
    for f in ("best_config.json", "best_config_glyph.json"):
        s = obj(RenderConfig.load(tmp_path / "glyph" / f))
        assert (s.accuracy, s.compression) == (summary["best"]["accuracy"], summary["best"]["compression"]), f
    assert not r.warnings

    r = run_search(load_settings(None, [*args, "base=code_style", "presets=[]"]), obj, tmp_path / "code")
    export = json.loads((tmp_path / "code" / "summary.json").read_text())["glyph_export"]
    assert not export["same_config"] and {"snap", "tab_size", "cr_newline", "wrap"} <= set(export["differs"])
    s = obj(RenderConfig.load(tmp_path / "code" / "best_config_glyph.json"))
    assert (export["accuracy"], export["compression"]) == (s.accuracy, s.compression)
    assert len(r.warnings) == 1 and "best_config_glyph.json is not the config scored" in r.warnings[0]


def test_pareto_staircase_only_turns_at_corners_a_config_reaches(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.cbook import STEP_LOOKUP_MAP

    from glyph_rt.search import report

    figs = []
    monkeypatch.setattr(report, "save_figure", lambda fig, path: figs.append(fig))
    front = [{"hash": "c", "accuracy": 0.845, "compression": 2.24, "generation": 0},
             {"hash": "a", "accuracy": 0.97, "compression": 0.82, "generation": 0},
             {"hash": "b", "accuracy": 0.88, "compression": 1.86, "generation": 0}]
    report.pareto_plot(front, front, None, 0.85, tmp_path / "p.png")
    line = figs[0].axes[0].lines[0]
    xs, ys = STEP_LOOKUP_MAP[line.get_drawstyle()](line.get_xdata(), line.get_ydata())
    corners = list(zip(xs.tolist(), ys.tolist()))
    assert corners == [(0.82, 0.97), (0.82, 0.88), (1.86, 0.88), (1.86, 0.845), (2.24, 0.845)]
    for x, y in corners:  # dominated by, or equal to, a config on the front
        assert any(e["compression"] >= x and e["accuracy"] >= y for e in front), (x, y)


def test_dpi_repair_counts_once_and_lands_on_the_largest_valid_dpi(space):
    def largest_valid(g, below):
        return max(d for d in range(int(space.genes["dpi"].lo), below)
                   if check_rules(space.to_config(dict(g, dpi=d)), space.rules) is None)

    g = dict(space.genome(space.sampler(0)), page_width=842, page_aspect=3.5, dpi=400)
    counts = Counter()
    g2, config = check(space, g, counts, prefix="operators.")
    assert dict(counts) == {"operators.repaired.over_model_pixel_budget": 1}
    assert g2["dpi"] == largest_valid(g2, 400) and check_rules(config, space.rules) is None
    rng = random.Random(5)
    cases = [dict(space.genome(space.sampler(0)), page_width=w, page_aspect=1.0, horizontal_scale=0.75, dpi=400)
             for w in (540.0, 552.0)]  # pages that fit at 392 (384) dpi but not at 391 (383): bisection alone misses
    cases += [dict(space.genome(space.sampler(i)), dpi=400, horizontal_scale=rng.choice([0.75, 0.9, 1.0]),
                   page_width=space.genes["page_width"].snap(rng.uniform(300, 842)),
                   page_aspect=space.genes["page_aspect"].snap(rng.uniform(0.6, 3.5))) for i in range(12)]
    for i, g in enumerate(cases):  # the model's 28-px rounding makes fitting jagged near the boundary: still largest
        counts = Counter()
        try:
            g2, config = check(space, g, counts)
        except Rejected:
            continue
        assert sum(counts.values()) <= 1 and g2["dpi"] == largest_valid(g2, 401), (i, dict(counts))


def test_an_evaluator_map_override_replaces_it_whole(tmp_path):
    from glyph_rt.search.objective import make_objective

    yml = tmp_path / "s.yaml"
    yml.write_text("objective: {mode: constrained, floor: 0.85}\n"
                   "evaluator: {kind: legibility, chars: 3000, blur: 0.6, noise: 0.08}\n")
    s = load_settings(str(yml), ["evaluator={kind: synthetic}"])
    assert s["evaluator"] == {"kind": "synthetic"} and isinstance(make_objective(s), SyntheticObjective)
    assert load_settings(str(yml), ["objective={mode: pareto}"])["objective"] == {"mode": "pareto", "floor": 0.5}
    assert load_settings(str(yml), ["evaluator.blur=1"])["evaluator"]["chars"] == 3000  # a dotted key: one entry
    with pytest.raises(ValueError, match=r"for kind synthetic .*evaluator=\{kind: synthetic"):
        make_objective(load_settings(str(yml), ["evaluator.kind=synthetic"]))


def test_a_legibility_text_without_the_readers_alphabet_is_refused(tmp_path, capsys):
    from glyph_rt.cli import main
    from glyph_rt.search.legibility import LegibilityObjective

    zh = tmp_path / "zh.txt"
    zh.write_text("这是一个用于测试的中文文本。" * 100, encoding="utf-8")
    with pytest.raises(ValueError, match="no character its reader knows"):
        LegibilityObjective(text=zh.read_text(encoding="utf-8"))
    assert main(["search", "--out", str(tmp_path / "out"), "--quiet", "evaluator.kind=legibility",
                 f"evaluator.text={zh}"]) != 0
    assert "no character its reader knows" in capsys.readouterr().err
    assert not (tmp_path / "out" / "history.jsonl").exists()  # refused before any config was scored


# ----------------------------------------------------------------- review fixes: keys, export, types, paths, limits
def test_the_critic_sends_only_the_key_its_variable_holds(tmp_path, monkeypatch, capsys):
    from glyph_rt.cli import main
    from glyph_rt.search import make_critic

    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    monkeypatch.delenv("MY_CRITIC_KEY", raising=False)
    args = ["critic.model=m", "critic.base_url=http://127.0.0.1:9/v1"]
    with pytest.raises(SearchError, match=r"critic.api_key_env: \$MY_CRITIC_KEY is not set"):
        load_settings(None, [*args, "critic.api_key_env=MY_CRITIC_KEY"])  # never $OPENAI_API_KEY in its place
    assert main(["search", "--out", str(tmp_path), "--quiet", *args, "critic.api_key_env=MY_CRITIC_KEY"]) == 2
    assert "$MY_CRITIC_KEY is not set" in capsys.readouterr().err and not (tmp_path / "history.jsonl").exists()
    monkeypatch.setenv("MY_CRITIC_KEY", "sk-mine")
    assert make_critic(load_settings(None, [*args, "critic.api_key_env=MY_CRITIC_KEY"])).client.api_key == "sk-mine"
    assert make_critic(load_settings(None, args)).client.api_key == "sk-openai"  # the default variable
    for none in ("", "null", "''"):  # no key: a local server that needs none
        assert make_critic(load_settings(None, [*args, f"critic.api_key_env={none}"])).client.api_key == "EMPTY"
    monkeypatch.delenv("OPENAI_API_KEY")
    assert make_critic(load_settings(None, args)).client.api_key == "EMPTY"


def test_the_glyph_export_is_scored_once_and_recorded(tmp_path):
    args = ["generations=0", "population=2", "base=code_style", "outputs.contact_sheet=0"]
    first = Counting()
    r = run_search(load_settings(None, args), first, tmp_path / "a")
    export = json.loads((tmp_path / "a" / "summary.json").read_text())["glyph_export"]
    assert not export["same_config"] and export["accuracy"] is not None and len(first.seen) == 3
    again = Counting()
    r2 = run_search(load_settings(None, args), again, tmp_path / "a")
    assert not again.seen and r2.evaluations == r.evaluations == 2 and r2.warnings == r.warnings
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["glyph_export"] == export
    records = History(tmp_path / "a" / "history.jsonl").of_type("export")
    assert [e["hash"] for e in records] == [first.seen[-1]]

    code = RenderConfig.preset("code_style")  # a failed score is recorded too: a rerun does not retry it
    failing = Counting(fail_on=lambda c: c.tab_size != code.tab_size)
    run_search(load_settings(None, args), failing, tmp_path / "b")
    again = Counting(fail_on=failing.fail_on)
    r = run_search(load_settings(None, args), again, tmp_path / "b")
    assert not again.seen and "scoring it failed (RuntimeError: model crashed)" in r.warnings[0]


def test_the_legibility_model_is_checked_before_any_config_is_rendered():
    from glyph_rt.search.legibility import LegibilityObjective

    for model in ("glm4V", "[glm4v]", "5"):
        with pytest.raises(SearchError, match=r"evaluator.model: .* is unknown; choose from glm4v, qwen2_5_vl"):
            load_settings(None, [f"evaluator={{kind: legibility, model: {model}}}"])
    with pytest.raises(ValueError, match="evaluator.model: 'glm4V' is unknown"):
        LegibilityObjective(chars=3000, model="glm4V")
    s = load_settings(None, ["evaluator={kind: legibility, model: qwen2_5_vl}"])
    assert s["evaluator"]["model"] == "qwen2_5_vl"


def test_the_history_is_strict_json_and_older_infinities_still_load(tmp_path):
    class Poor(Counting):  # under the floor: no feasible compression yet; and an extra that is not a number
        def __call__(self, config):
            score = super().__call__(config)
            score.accuracy *= 0.5
            score.extra["ratio"] = float("nan")
            return score

    def strict(line):
        return json.loads(line, parse_constant=lambda c: pytest.fail(f"not JSON: {c} in {line[:80]}"))

    s = load_settings(None, ["generations=2", "objective.floor=0.9", "patience=0"])
    r = run_search(s, Poor(), tmp_path / "a", report=False)
    hist = tmp_path / "a" / "history.jsonl"
    records = [strict(line) for line in hist.read_text().splitlines()]
    assert [rec["progress"][0] for rec in records if rec["type"] == "generation"] == [None, None, None]
    assert all(rec["extra"]["ratio"] is None for rec in records if rec["type"] == "eval")
    (tmp_path / "b").mkdir()  # a history written before: -Infinity for no feasible compression
    old = hist.read_text().replace('"progress": [null,', '"progress": [-Infinity,')
    (tmp_path / "b" / "history.jsonl").write_text(old)
    again = Poor()
    r2 = run_search(s, again, tmp_path / "b", report=False)
    assert not again.seen and (r2.stop_reason, r2.generations, r2.best) == (r.stop_reason, r.generations, r.best)


@pytest.mark.parametrize("overrides, match", [
    (["styles=[a]"], r"styles: \['a'\] must be the path of a styles YAML"),
    (["presets=[1]"], "presets: 1 is not a preset name; choose from glyph"),
    (["presets=[null]"], "presets: None is not a preset name"),
    (["critic.base_url=1", "critic.model=m"], "critic.base_url: 1 must be text"),
    (["critic.base_url=http://127.0.0.1:9/v1", "critic.model=[1]"], r"critic.model: \[1\] must be text"),
    (["critic.api_key_env=[1]", "critic.base_url=http://127.0.0.1:9/v1", "critic.model=m"],
     r"critic.api_key_env: \[1\] must be text"),
    (["evaluator={kind: legibility, tokenizer: 5}"], "evaluator.tokenizer: 5 must be text"),
    (["evaluator={kind: legibility, text: 5}"], "evaluator.text: 5 must be text"),
    (["evaluator={kind: eval, target: x, items: 5}"], "evaluator.items: 5 must be text"),
    (["operators.repair=maybe"], "operators.repair: 'maybe' must be true or false"),
])
def test_settings_of_the_wrong_type_are_refused_by_name(tmp_path, capsys, overrides, match):
    from glyph_rt.cli import main

    with pytest.raises(SearchError, match=match):
        load_settings(None, overrides)
    assert main(["search", "--out", str(tmp_path), "--quiet", *overrides]) == 2
    err = capsys.readouterr().err
    assert err.startswith("glyph-rt: error: ") and "Traceback" not in err


def test_home_relative_paths_in_the_settings_are_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "styles.yaml").write_text((ROOT / "bench" / "search_styles.yaml").read_text())
    (tmp_path / "text.txt").write_text("Lorem ipsum dolor sit amet. " * 50)
    yml = tmp_path / "conf" / "search.yaml"
    yml.parent.mkdir()
    yml.write_text("styles: ~/styles.yaml\noutputs: {text: ~/text.txt}\n"
                   "evaluator: {kind: legibility, text: ~/text.txt}\n")
    for s in (load_settings(str(yml)),
              load_settings(None, ["styles=~/styles.yaml", "outputs.text=~/text.txt", "evaluator.text=~/text.txt"])):
        assert s["styles"] == str(tmp_path / "styles.yaml") and s["outputs"]["text"] == str(tmp_path / "text.txt")
        assert s["evaluator"]["text"] == str(tmp_path / "text.txt")
    s = load_settings(None, ["styles=~/styles.yaml", "generations=0", "population=2", "outputs.contact_sheet=0"])
    assert run_search(s, Counting(), tmp_path / "out", report=False).evaluations == 2


def test_a_rerun_under_lower_limits_says_it_replays_the_earlier_run(tmp_path, capsys):
    from glyph_rt.cli import main

    args = ["search", "--out", str(tmp_path), "--quiet", "outputs.contact_sheet=0", "patience=0"]
    assert main([*args, "generations=3"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main([*args, "generations=3"]) == 0  # the same limits: nothing to say
    assert "warning" not in capsys.readouterr().err
    again = Counting()
    r = run_search(load_settings(None, ["generations=1", "max_evaluations=10", "patience=0"]), again, tmp_path,
                   report=False)
    assert not again.seen and r.generations == 3 and r.evaluations == 32
    assert len(r.warnings) == 1 and "4 generations (0-3), more than generations=1 allows and 32 evaluations, more " \
        "than max_evaluations=10 allows" in r.warnings[0] and "use another --out" in r.warnings[0]
    assert main([*args, "generations=2"]) == 0
    assert "warning: " in capsys.readouterr().err
