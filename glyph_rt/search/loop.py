"""The search loop: an elitist (mu + lambda) genetic search over rendering configs.

Generation 0 is the style sampler's first `population` configs (plus any named presets); each next
generation's children come from the critic's proposals (when one is set) and then from the
deterministic operators (tournament selection, crossover, mutation) until there are `offspring` new
configs. Survivors are the best `population` of parents + children under the goal. Every random
choice of generation g comes from a generator seeded by (seed, g), the critic's answers are logged,
and every evaluation is cached by config hash, so a run resumed from its history after a kill ends
exactly where an uninterrupted run ends, and no config is evaluated twice.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

try:
    import fcntl
except ImportError:  # no flock (Windows): runs sharing an output directory are not prevented
    fcntl = None

from .. import __version__
from ..eval.targets import TargetError
from ..render.config import PRESETS, RenderConfig
from ..train.styles import StyleSampler
from .critic import Critic, CriticError, parse_answer, prompt, proposal_genome
from .history import History, plain
from .objective import Goal, Objective
from .operators import Rejected, check, crossover, mutate, tournament
from .space import SearchSpace, config_hash

DEFAULTS: dict = {
    "seed": 0,
    "population": 8,          # survivors kept per generation (mu)
    "offspring": 8,           # new configs evaluated per generation (lambda)
    "generations": 10,        # stop after this many generations after generation 0
    "max_evaluations": 200,   # stop at this many evaluations
    "patience": 3,            # stop after this many generations without improvement
    "objective": {"mode": "constrained", "floor": 0.5},
    "operators": {"mutation_rate": None, "sigma": 0.15, "crossover_rate": 0.5, "tournament": 3, "repair": True},
    "styles": None,           # a styles YAML: the space and the initial population (default: built-in)
    "presets": [],            # RenderConfig presets added to generation 0 as they are (baselines), e.g. [glyph]
    "base": "glyph",          # the preset whose settings that are not genes (snap, tab_size...) every config takes
    "critic": {"base_url": None, "model": None, "api_key_env": "OPENAI_API_KEY", "timeout": 60.0,
               "temperature": 0.7, "max_tokens": 2048, "max_proposals": 4},
    "evaluator": {"kind": "synthetic"},
    "outputs": {"contact_sheet": 6, "text": None},
}
# settings that change which configs are evaluated: a resume must keep them
DECISIVE = ("seed", "population", "offspring", "objective", "operators", "styles", "presets", "base", "critic.model",
            "critic.max_proposals")


class SearchError(ValueError):
    """A bad search setting or a history that does not belong to these settings."""


# ----------------------------------------------------------------- settings
def load_settings(path: str | None = None, overrides: list[str] = ()) -> dict:
    """DEFAULTS, a YAML file over them, then `key=value` overrides (dotted keys, YAML values): a dotted key changes
    one entry, `key={...}` replaces that map whole (`evaluator={kind: synthetic}` drops the file's evaluator keys;
    the defaults fill what it leaves out)."""
    s = copy.deepcopy(DEFAULTS)
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise SearchError(f"search config: file {str(p)!r} does not exist")
        try:
            user = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise SearchError(f"search config: {str(p)!r} is not valid YAML: {e}") from None
        if not isinstance(user, dict):
            raise SearchError(f"search config: {str(p)!r} must be a mapping")
        _merge(s, user, "")
        _paths(s, p.parent)  # file paths in the file are relative to it
    for o in overrides:
        if "=" not in o:
            raise SearchError(f"override {o!r}: use key=value (e.g. objective.floor=0.8)")
        key, _, raw = o.partition("=")
        try:
            value = yaml.safe_load(raw) if raw else None
        except yaml.YAMLError:
            value = raw
        node, parts = {}, key.strip().split(".")
        cur = node
        for k in parts[:-1]:
            cur = cur.setdefault(k, {})
        cur[parts[-1]] = value
        if isinstance(value, dict):  # key={...} replaces that map whole (as train's data.loader={...}): the defaults
            _reset(s, parts)  # fill what it leaves out; a dotted key (evaluator.kind=eval) changes one entry
        _merge(s, node, "")
    _paths(s)
    check_settings(s)
    return s


def _paths(s: dict, relative_to: Path | None = None) -> None:
    """The settings' file paths with ~ expanded, and relative ones taken from `relative_to` when given."""
    for node, key in ((s, "styles"), (s["evaluator"], "items"), (s["evaluator"], "text"), (s["outputs"], "text")):
        v = node.get(key) if isinstance(node, dict) else None
        if isinstance(v, str) and v:
            v = os.path.expanduser(v)
            node[key] = str(relative_to / v) if relative_to is not None and not Path(v).is_absolute() else v


_OPEN_MAPS = ("evaluator",)


def _reset(s: dict, parts: list[str]) -> None:
    """The map at dotted `parts` in `s` back to its default (empty under an open map), when there is one."""
    cur, default = s, DEFAULTS
    for k in parts[:-1]:
        cur = cur.get(k) if isinstance(cur, dict) else None
        default = default.get(k) if isinstance(default, dict) else None
    if isinstance(cur, dict) and isinstance(cur.get(parts[-1]), dict):
        d = default.get(parts[-1]) if isinstance(default, dict) else None
        cur[parts[-1]] = copy.deepcopy(d) if isinstance(d, dict) else {}


def _merge(base: dict, user: dict, where: str) -> None:
    for k, v in user.items():
        path = f"{where}{k}"
        if k not in base and where.split(".")[0] not in _OPEN_MAPS:  # maps under an open one are open too
            raise SearchError(f"search config: unknown key {path!r}; known: {', '.join(base)}")
        if isinstance(base.get(k), dict):
            if not isinstance(v, dict):
                raise SearchError(f"search config: {path!r} must be a mapping ({', '.join(base[k])})")
            _merge(base[k], v, path + ".")
        else:
            base[k] = v


def check_settings(s: dict) -> None:
    for k in ("population", "offspring", "max_evaluations"):
        if isinstance(s[k], bool) or not isinstance(s[k], int) or s[k] < 1:
            raise SearchError(f"{k}: {s[k]!r} must be a whole number >= 1")
    for k in ("seed", "generations", "patience"):
        if isinstance(s[k], bool) or not isinstance(s[k], int) or s[k] < 0:
            raise SearchError(f"{k}: {s[k]!r} must be a whole number >= 0")
    try:
        Goal(s["objective"]["mode"], s["objective"]["floor"])
    except ValueError as e:
        raise SearchError(str(e)) from None
    floor = s["objective"]["floor"]
    if isinstance(floor, bool) or not 0 <= floor <= 1:
        raise SearchError(f"objective.floor: {floor!r} must be in [0, 1] (accuracy is a fraction: 0.9 for 90%)")
    op = s["operators"]
    for k in ("crossover_rate",) + (("mutation_rate",) if op["mutation_rate"] is not None else ()):
        v = op[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            raise SearchError(f"operators.{k}: {v!r} must be a probability in [0, 1]")
    if isinstance(op["sigma"], bool) or not isinstance(op["sigma"], (int, float)) or not 0 < op["sigma"] <= 1:
        raise SearchError(f"operators.sigma: {op['sigma']!r} must be in (0, 1] (a fraction of each gene's range)")
    if isinstance(op["tournament"], bool) or not isinstance(op["tournament"], int) or op["tournament"] < 1:
        raise SearchError(f"operators.tournament: {op['tournament']!r} must be a whole number >= 1")
    if not isinstance(op["repair"], bool):
        raise SearchError(f"operators.repair: {op['repair']!r} must be true or false")
    _text(s, "styles", "", "the path of a styles YAML")
    c = s["critic"]
    for k in ("base_url", "model", "api_key_env"):
        _text(c, k, "critic.", "text")
    if isinstance(c["max_proposals"], bool) or not isinstance(c["max_proposals"], int) or c["max_proposals"] < 0:
        raise SearchError(f"critic.max_proposals: {c['max_proposals']!r} must be a whole number >= 0")
    if isinstance(c["max_tokens"], bool) or not isinstance(c["max_tokens"], int) or c["max_tokens"] < 1:
        raise SearchError(f"critic.max_tokens: {c['max_tokens']!r} must be a whole number >= 1 (the length of the "
                          "critic's answer; its prompt plus this must fit the critic model's context)")
    _number(c, "timeout", "critic.", 0, strict=True)
    _number(c, "temperature", "critic.", 0)
    if c["base_url"] and not c["model"]:
        raise SearchError("critic.model: set the model name the endpoint serves (critic.base_url is set)")
    if c["base_url"]:
        critic_api_key(c)
    if not isinstance(s["presets"], list):
        raise SearchError(f"presets: {s['presets']!r} must be a list of preset names")
    for name in s["presets"]:
        if not isinstance(name, str):
            raise SearchError(f"presets: {name!r} is not a preset name; choose from {', '.join(PRESETS)}")
        try:
            RenderConfig.preset(name)
        except ValueError as e:
            raise SearchError(f"presets: {e}") from None
    if not isinstance(s["base"], str):
        raise SearchError(f"base: {s['base']!r} must be a preset name (the config whose settings that are not genes, "
                          "such as snap and tab_size, every searched config takes; default glyph)")
    try:
        RenderConfig.preset(s["base"])
    except ValueError as e:
        raise SearchError(f"base: {e}") from None
    ev = s["evaluator"]
    if not isinstance(ev, dict):
        raise SearchError(f"evaluator: {ev!r} must be a mapping")
    for k in ("items", "text", "out", "tokenizer", "api_key"):  # the evaluators' settings, checked before any work
        _text(ev, k, "evaluator.", "text")
    if ev.get("kind") == "legibility" and "model" in ev:
        from .legibility import check_model

        try:
            check_model(ev["model"])
        except ValueError as e:
            raise SearchError(str(e)) from None
    for k in ("delay", "blur", "noise"):
        _number(ev, k, "evaluator.", 0)
    _number(ev, "timeout", "evaluator.", 0, strict=True)
    for k, lo in (("chars", 1), ("max_glyphs", 1), ("seed", 0), ("concurrency", 1)):
        v = ev.get(k)
        if k in ev and (isinstance(v, bool) or not isinstance(v, int) or v < lo):
            hint = " (YAML reads 1e4 as text: write 10000)" if isinstance(v, str) else ""
            raise SearchError(f"evaluator.{k}: {v!r} must be a whole number >= {lo}{hint}")
    out = s["outputs"]  # used when the search ends: checked before it starts
    n = out["contact_sheet"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise SearchError(f"outputs.contact_sheet: {n!r} must be a whole number >= 0 (the best configs shown; "
                          "0: no contact sheet)")
    if out["text"] is not None:
        _text_file(out["text"], "outputs.text")


def _text_file(v, key: str) -> None:
    """`v` must name a readable UTF-8 text file."""
    if not isinstance(v, str) or not Path(v).is_file():
        raise SearchError(f"{key}: {v!r} is not a file; give a UTF-8 text file, or leave it unset for the "
                          "built-in sample")
    try:
        Path(v).read_bytes().decode("utf-8")
    except OSError as e:
        raise SearchError(f"{key}: {v!r} cannot be read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise SearchError(f"{key}: {v!r} is not UTF-8 text (invalid byte at offset {e.start})") from None


def _text(node: dict, key: str, where: str, what: str) -> None:
    """node[key], when set (not null), must be a string."""
    v = node.get(key)
    if v is not None and not isinstance(v, str):
        raise SearchError(f"{where}{key}: {v!r} must be {what}")


def _number(node: dict, key: str, where: str, lo: float, strict: bool = False) -> None:
    """node[key], when set, must be a finite number >= lo (> lo when `strict`)."""
    if key not in node:
        return
    v = node[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < lo or \
            (strict and v == lo):
        raise SearchError(f"{where}{key}: {v!r} must be a number {'>' if strict else '>='} {lo:g}")


def _get(s: dict, dotted: str):
    for k in dotted.split("."):
        s = s[k]
    return s


def critic_api_key(c: dict) -> str:
    """The critic's API key: the value of the variable critic.api_key_env names. Only the default, OPENAI_API_KEY,
    may be unset (then, or when api_key_env is null or empty, no key is sent: "EMPTY", for a local server that
    needs none); another variable unset is refused, so that no other key reaches the critic's endpoint."""
    name = c["api_key_env"]
    if not name:
        return "EMPTY"
    key = os.environ.get(name)
    if key:
        return key
    if name != DEFAULTS["critic"]["api_key_env"]:
        raise SearchError(f"critic.api_key_env: ${name} is not set (or empty); set it to the key of the critic "
                          f"endpoint {c['base_url']}, or give critic.api_key_env: null for an endpoint that needs none")
    return "EMPTY"


def make_critic(s: dict) -> Critic | None:
    """The critic of settings["critic"], or None when no base_url is set."""
    c = s["critic"]
    if not c["base_url"]:
        return None
    return Critic(c["base_url"], c["model"], api_key=critic_api_key(c), timeout=c["timeout"],
                  temperature=c["temperature"], max_tokens=c["max_tokens"])


# ----------------------------------------------------------------- the loop
@dataclass
class SearchResult:
    best: dict | None  # the best eval record
    config: RenderConfig | None
    front: list  # Pareto front of every evaluated config (eval records)
    stop_reason: str
    evaluations: int
    generations: int
    counts: dict = field(default_factory=dict)
    history: Path | None = None
    files: list = field(default_factory=list)
    skipped: dict = field(default_factory=dict)  # output file -> why it was not written (e.g. no matplotlib)
    feasible: bool = False  # whether the best config reaches objective.floor
    warnings: list = field(default_factory=list)  # what the caller should tell (e.g. the Glyph export differs)


class Search:
    """One search run writing to `out_dir` (history.jsonl there; resumed when it exists)."""

    def __init__(self, settings: dict, objective: Objective, out_dir, critic: Critic | None = None,
                 progress: bool = False):
        check_settings(settings)
        self.s, self.objective, self.critic, self.progress = settings, objective, critic, progress
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        sampler = StyleSampler.from_file(settings["styles"], seed=settings["seed"]) if settings["styles"] \
            else StyleSampler(seed=settings["seed"])
        self.space = SearchSpace(sampler, RenderConfig.preset(settings["base"]))
        o = settings["objective"]
        self.goal = Goal(o["mode"], float(o["floor"]))
        self.hist: History | None = None  # read by run(), under the lock
        self.cache: dict[str, dict] = {}
        self._lock = None

    @contextlib.contextmanager
    def locked(self):
        """Holds an exclusive lock on `out`/.lock (it names this process's pid) so that no two runs share `out`:
        each would evaluate every config again, and a history read while the other appends may lose a record."""
        if self._lock is not None or fcntl is None:  # held already: run() inside run_search
            yield
            return
        path = self.out / ".lock"
        f = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip()
            f.close()
            who = f"pid {pid}" if pid else f"it holds {path}"
            raise SearchError(f"another search is running in {self.out} ({who}); wait for it to end, or use another "
                              "output directory") from None
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._lock = f
        try:
            yield
        finally:
            self._lock = None
            f.truncate(0)  # no pid: nobody holds it
            f.close()  # releases the lock

    # ------------------------------------------------------------- header
    def _header(self) -> dict:
        settings = {k: _get(self.s, k) for k in DECISIVE}
        if settings["styles"]:  # the file by its content: any path to it resumes, an edited one does not
            p = Path(settings["styles"]).expanduser().resolve()
            settings["styles"] = {"path": str(p), "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
        return {"type": "header", "version": __version__, "objective": self.objective.describe(),
                "settings": settings}

    def _check_header(self) -> None:
        want, have = self._header(), self.hist.header
        if have is None:
            self.hist.append(want)
            return

        def same(n, a, b):
            if n == "styles" and isinstance(a, dict) and isinstance(b, dict):
                return a.get("sha256") == b.get("sha256")
            if n == "styles" and isinstance(a, str) and isinstance(b, dict):  # a history from before the hash:
                return str(Path(a).expanduser().resolve()) == b.get("path")  # its path, resolved as now
            return a == b

        def show(v):
            return f"{v['path']} (content sha256 {str(v.get('sha256'))[:12]})" if isinstance(v, dict) and \
                "sha256" in v else repr(v)

        for k in ("objective", "settings"):
            h, w = have.get(k) or {}, want[k]
            diff = {n: (h.get(n), w.get(n)) for n in {**h, **w} if not same(n, h.get(n), w.get(n))}
            if diff:
                raise SearchError(f"{self.hist.path} belongs to another search ({k} differs: "
                                  f"{', '.join(f'{n}: {show(a)} -> {show(b)}' for n, (a, b) in diff.items())}); "
                                  "use another output directory to start a new one")

    # ------------------------------------------------------------- candidates
    def initial(self, counts: Counter) -> list[dict]:
        out, seen = [], set()
        for name in self.s["presets"]:  # the baseline as it is: not snapped to the genes' grid nor repaired
            config = RenderConfig.preset(name)
            h = config_hash(config)
            if h in seen:
                counts["initial.duplicate"] += 1
                continue
            seen.add(h)
            out.append({"hash": h, "genome": self.space.genome(config), "config": config, "parents": [],
                        "proposer": f"preset:{name}", "reason": ""})
        i = 0
        while len(out) < self.s["population"] + len(self.s["presets"]) and i < 50 * self.s["population"]:
            self._add(out, seen, self.space.genome(self.space.sampler(i)), [], "sampler", f"style sample {i}",
                      counts, "initial.")
            i += 1
        return out

    def _add(self, out, seen, genome, parents, proposer, reason, counts, prefix) -> bool:
        try:
            genome, config = check(self.space, genome, counts, self.s["operators"]["repair"], prefix)
        except Rejected as e:
            counts[f"{prefix}rejected.{e.reason}"] += 1
            return False
        h = config_hash(config)
        if h in seen:
            counts[f"{prefix}duplicate"] += 1
            return False
        seen.add(h)
        out.append({"hash": h, "genome": genome, "config": config, "parents": parents, "proposer": proposer,
                    "reason": reason})
        return True

    def offspring(self, g: int, ranked: list[dict], counts: Counter) -> list[dict]:
        s, op = self.s, self.s["operators"]
        rng = random.Random(f"glyph_rt.search:{s['seed']}:{g}")
        # configs of earlier generations are duplicates; this generation's, evaluated before a kill, are
        # drawn again (and found in the cache) so a resumed generation equals the uninterrupted one
        seen = {h for h, e in self.cache.items() if e["generation"] < g} | {e["hash"] for e in ranked}
        out: list[dict] = []
        rec, limit = self.hist.critic(g), s["critic"]["max_proposals"]
        # a failed answer is asked again on resume only while none of the generation's configs is evaluated: after
        # that, new proposals would take the operators' places and orphan the children evaluated before the kill
        started = any(e["generation"] == g for e in self.cache.values())
        if (rec is None or rec.get("error")) and self.critic is not None and limit > 0 and not started:
            rec = self._ask_critic(g, ranked)
        if rec is not None:
            if rec.get("error"):
                counts["critic.failed"] += 1
            ids = {f"c{i + 1}": e for i, e in enumerate(ranked)}
            props = rec["proposals"]
            if len(props) > limit:
                counts["critic.rejected.over_limit"] += len(props) - limit
            for n, p in enumerate(props[:limit]):
                if len(out) >= s["offspring"]:  # the generation is full
                    counts["critic.rejected.over_offspring"] += min(len(props), limit) - n
                    break
                try:
                    genome, pids, reason = proposal_genome(self.space, p, {k: e["genome"] for k, e in ids.items()})
                    added = self._add(out, seen, genome, [ids[i]["hash"] for i in pids], "critic", reason, counts,
                                      "critic.")
                except Rejected as e:
                    counts[f"critic.rejected.{e.reason}"] += 1
                    continue
                except Exception:  # whatever else a logged answer holds must not stop every resume
                    counts["critic.rejected.malformed"] += 1
                    continue
                if added:
                    counts["critic.accepted"] += 1
        tries = 0
        while len(out) < s["offspring"] and tries < 50 * s["offspring"]:
            tries += 1
            a = tournament(ranked, rng, op["tournament"])
            if len(ranked) > 1 and rng.random() < op["crossover_rate"]:
                b = tournament(ranked, rng, op["tournament"])
                child, parents, how = crossover(self.space, a["genome"], b["genome"], rng), [a, b], "crossover+mutate"
            else:
                child, parents, how = a["genome"], [a], "mutate"
            child = mutate(self.space, child, rng, op["mutation_rate"], op["sigma"])
            self._add(out, seen, child, [p["hash"] for p in parents], "operators", how, counts, "operators.")
        return out

    def _ask_critic(self, g: int, ranked: list[dict]) -> dict:
        rows = [{"id": f"c{i + 1}", "genome": e["genome"], "accuracy": e.get("accuracy"),
                 "compression": e.get("compression")} for i, e in enumerate(ranked)]
        o = self.s["objective"]
        goal = (f"maximise compression subject to accuracy >= {o['floor']}" if o["mode"] == "constrained"
                else "extend the Pareto front of (accuracy, compression), both maximised")
        rec = {"type": "critic", "generation": g, "proposals": [], "error": None}
        messages = prompt(self.space, rows, goal, self.s["critic"]["max_proposals"])
        try:
            rec["answer"] = self.critic.ask(messages)
        except CriticError as e:
            rec["error"] = str(e)
        else:
            rec["proposals"], rec["error"] = _proposals(rec["answer"])
        self.hist.append(rec)
        return rec

    # ------------------------------------------------------------- evaluation
    def evaluate(self, g: int, cand: dict) -> dict:
        rec = self._score(cand["config"], {"type": "eval", "generation": g, "hash": cand["hash"],
                                           "parents": cand["parents"], "proposer": cand["proposer"],
                                           "reason": cand["reason"], "genome": cand["genome"]})
        self.cache[cand["hash"]] = rec
        return rec

    def score_export(self, config: RenderConfig) -> dict:
        """The score of `config` (best_config_glyph.json, when it is not the config scored): the search's evaluation
        of it, an earlier run's export record, or scored now and recorded as one, so that no rerun scores it again."""
        h = config_hash(config)
        if h in self.cache:
            return self.cache[h]
        done = [r for r in self.hist.of_type("export") if r["hash"] == h]
        return done[-1] if done else self._score(config, {"type": "export", "hash": h})

    def _score(self, config: RenderConfig, rec: dict) -> dict:
        """`rec` with `config`, the objective's accuracy, compression and extra (or the error) and the seconds it took,
        appended to the history. A failure is recorded, not raised, but for the target down (TargetError), which is
        not the config's failure: nothing is recorded and a rerun scores it."""
        t0 = time.perf_counter()
        rec.update(config=config.to_dict(), accuracy=None, compression=None, extra={})
        try:
            score = self.objective(config)
            acc, comp = float(score.accuracy), float(score.compression)
            rec["extra"] = plain(score.extra)
            if math.isfinite(acc) and math.isfinite(comp):
                rec.update(accuracy=acc, compression=comp)
            else:
                rec["error"] = (f"the objective scored accuracy {acc!r}, compression {comp!r}; both must be finite "
                                "numbers (ranked as a failed evaluation)")
        except (KeyboardInterrupt, SystemExit, TargetError):
            raise
        except Exception as e:  # recorded and ranked last: the search goes on
            rec["error"] = f"{type(e).__name__}: {e}"
        rec["seconds"] = round(time.perf_counter() - t0, 6)
        self.hist.append(rec)
        return rec

    # ------------------------------------------------------------- run
    def run(self) -> SearchResult:
        with self.locked():
            self.hist = History(self.out / "history.jsonl")
            self.cache = self.hist.evaluations()
            return self._run()

    def _run(self) -> SearchResult:
        from tqdm import tqdm

        s = self.s
        self._check_header()
        gens = self.hist.generations()
        per_gen = Counter(e["generation"] for e in self.cache.values())
        n_eval = 0  # evaluations up to the generation at hand, counted as the history is replayed
        bar = tqdm(total=s["max_evaluations"], initial=min(len(self.cache), s["max_evaluations"]), unit="config",
                   desc="search", disable=not self.progress)
        survivors: list[dict] = []
        best_progress, stale, g, reason = None, 0, 0, None
        while True:
            if g > 0 and g not in gens:  # a generation in the history passed these checks when it ran
                if g > s["generations"]:
                    reason = "generations"
                elif n_eval >= s["max_evaluations"]:
                    reason = "evaluations"
                elif stale >= s["patience"] > 0:
                    reason = "patience"
                if reason:
                    break
            if g in gens:
                rec = gens[g]
                survivors = [self.cache[h] for h in rec["survivors"]]
                n_eval += per_gen[g]
            else:
                counts: Counter = Counter()
                cands = self.initial(counts) if g == 0 else self.offspring(g, survivors, counts)
                new = []
                for c in cands:
                    if c["hash"] in self.cache:  # evaluated before the kill
                        new.append(self.cache[c["hash"]])
                        n_eval += self.cache[c["hash"]]["generation"] == g
                    elif n_eval < s["max_evaluations"]:
                        new.append(self.evaluate(g, c))
                        n_eval += 1
                        bar.update(1)
                    else:
                        counts["skipped.budget"] += 1
                survivors = self.goal.rank(_uniq(survivors + new))[: s["population"]]
                best = self.goal.best(list(self.cache.values()))
                rec = {"type": "generation", "generation": g, "survivors": [e["hash"] for e in survivors],
                       "children": [e["hash"] for e in new], "best": best["hash"] if best else None,
                       "progress": list(self.goal.progress(list(self.cache.values()))),
                       "counts": dict(sorted(counts.items()))}
                self.hist.append(rec)
                gens[g] = rec
            progress = tuple(-math.inf if v is None else v for v in rec["progress"])
            if best_progress is None or any(a > b + 1e-12 for a, b in zip(progress, best_progress)):
                stale = 0
            else:
                stale += 1
            best_progress = progress if best_progress is None else tuple(map(max, progress, best_progress))
            g += 1
        bar.close()
        if not any(r.get("generations") == g - 1 and r.get("reason") == reason for r in self.hist.of_type("end")):
            self.hist.append({"type": "end", "reason": reason, "generations": g - 1, "evaluations": n_eval})
        self.hist.close()
        result = self.result(reason, g - 1)
        over = []  # only a replay goes past a limit: a run with a higher one recorded them
        if g - 1 > s["generations"]:
            over.append(f"{g} generations (0-{g - 1}), more than generations={s['generations']} allows")
        if n_eval > s["max_evaluations"]:
            over.append(f"{n_eval} evaluations, more than max_evaluations={s['max_evaluations']} allows")
        if over:
            result.warnings.append(f"{self.hist.path} holds {' and '.join(over)}: a rerun replays the recorded "
                                   "generations as they are, not cut to a lower limit, so these results are the "
                                   "earlier run's; use another --out to search with the new limits")
        return result

    def result(self, reason: str, last_gen: int) -> SearchResult:
        from .objective import pareto_fronts

        evals = list(self.cache.values())
        best = self.goal.best(evals)
        ok = [e for e in evals if e.get("accuracy") is not None]
        counts: Counter = Counter()
        for r in self.hist.of_type("generation"):
            counts.update(r["counts"])
        counts["failed"] = sum(1 for e in evals if e.get("error"))
        front = sorted(pareto_fronts(ok)[0], key=lambda e: e["compression"]) if ok else []
        return SearchResult(best, self.space.config_of(best) if best else None, front, reason, len(evals), last_gen,
                            dict(sorted(counts.items())), self.hist.path,
                            feasible=best is not None and self.goal.feasible(best))


def _proposals(answer) -> tuple[list, str | None]:
    """(the answer's proposals, None), or ([], why it has none): whatever it holds, the operators fill the
    generation."""
    try:
        return parse_answer(answer), None
    except CriticError as e:
        return [], str(e)
    except Exception as e:
        return [], f"the critic's answer cannot be read: {type(e).__name__}: {e}"


def _uniq(entries: list[dict]) -> list[dict]:
    seen, out = set(), []
    for e in entries:
        if e["hash"] not in seen:
            seen.add(e["hash"])
            out.append(e)
    return out


def run_search(settings: dict, objective: Objective, out_dir, critic: Critic | None = None,
               progress: bool = False, report: bool = True) -> SearchResult:
    """Runs (or resumes) a search and writes its outputs to `out_dir` (see glyph_rt.search.report)."""
    search = Search(settings, objective, out_dir, critic, progress)
    with search.locked():  # the outputs too: they read the history, which another run must not append to then
        result = search.run()
        if report:
            from .report import write_outputs

            result.files = write_outputs(result, out_dir, settings, search.space, search.score_export)
    return result
