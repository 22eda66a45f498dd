"""The search's append-only history (JSONL) and what a resumed run reads back from it.

Records, one JSON object a line, each with a "type":
- header: the settings that decide the run (a resume must match them);
- critic: the critic's answer for a generation: its text ("answer"; absent in older histories and when
  the endpoint failed), the proposals read from it, or the error (replayed on resume; a failed answer
  is asked again only while none of the generation's configs is evaluated);
- eval: one evaluated config: hash, generation, parents, proposer, reason, config, accuracy,
  compression, extra, seconds (or error);
- generation: the survivors of a generation, its best, the counts of repairs and rejections, its progress (what
  must grow for the next one to count as an improvement; null for none yet, e.g. no config above the floor);
- export: the score of best_config_glyph.json when it is not the config scored (hash, config, accuracy,
  compression, extra, seconds or error), so that a rerun does not score it again;
- end: why the run stopped.
Each line is strict JSON (a number that is not finite is written as null; histories written before hold
-Infinity, which still loads), flushed and fsynced before the run goes on; a line cut short by a kill is
dropped when the file is opened again.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..fileio import cut_torn_tail, json_lines, text_lines


class HistoryError(ValueError):
    pass


def plain(x):
    """`x` as strict JSON values: numpy scalars and arrays as numbers and lists, a number that is not finite as None,
    anything else unknown as text."""
    if isinstance(x, dict):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if x is None or isinstance(x, (bool, int, str)):
        return x
    try:
        return plain(x.tolist())  # numpy (and torch) scalars and arrays
    except Exception:
        return str(x)


class History:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.records: list[dict] = []
        if self.path.exists():
            self._load()
        self._f = None

    def _load(self) -> None:
        data = cut_torn_tail(self.path)
        for i, rec in json_lines(text_lines(data.decode("utf-8")), f"the history {self.path}", HistoryError):
            if not isinstance(rec, dict) or "type" not in rec:
                raise HistoryError(f"{self.path}: line {i} is not a history record")
            self.records.append(rec)

    def append(self, record: dict) -> None:
        if self._f is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "a", encoding="utf-8")
        self._f.write(json.dumps(plain(record), sort_keys=True, allow_nan=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.records.append(record)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def of_type(self, kind: str) -> list[dict]:
        return [r for r in self.records if r["type"] == kind]

    @property
    def header(self) -> dict | None:
        h = self.of_type("header")
        return h[0] if h else None

    def evaluations(self) -> dict[str, dict]:
        """hash -> eval record (the cache of scores)."""
        return {r["hash"]: r for r in self.of_type("eval")}

    def generations(self) -> dict[int, dict]:
        return {r["generation"]: r for r in self.of_type("generation")}

    def critic(self, generation: int) -> dict | None:
        """The critic's last answer for `generation` (a failed one is asked again when a search resumes
        before any of the generation's configs is evaluated)."""
        found = [r for r in self.of_type("critic") if r["generation"] == generation]
        return found[-1] if found else None
