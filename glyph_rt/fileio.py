"""Files that are never left half-written: atomic replacement, figures saved whole, append-only JSONL with a
torn last line (a killed write) cut off before the next append, and JSONL read with errors that name the line.
Standard library only (figures: any matplotlib Figure passed in)."""
from __future__ import annotations

import json
import os
import re
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yields a temporary path beside `path` (same suffix, so writers that infer the format from it still work);
    it replaces `path` when the block ends without an error and is removed when it raises."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}-{threading.get_ident()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def output_dir(path: str | os.PathLike, name: str = "out_dir") -> Path:
    """The output directory `path` (named `name` in messages), created if needed, where files can be created; a
    ValueError saying what to change otherwise (empty, a file, under a file, not writable)."""
    if not str(path):
        raise ValueError(f"{name} is empty; give a directory (it is created if missing)"
                         + (f", e.g. {name} . for this one" if name.startswith("--") else ""))
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{name} {str(path)!r} is a file; give a directory (it is created if missing)")
    _make_dir(out, name, path, "it")
    _check_writable_dir(out, f"{name} {str(path)!r}")
    return out


def output_file(path: str | os.PathLike, name: str = "output") -> Path:
    """An output file: not a directory; its directory created if missing and writable; an existing file writable
    (opened to append, so that nothing of it changes); a ValueError saying what to change otherwise."""
    if not str(path):
        raise ValueError(f"{name} is empty; give a file")
    out = Path(path)
    if out.is_dir():
        raise ValueError(f"{name} {str(path)!r} is a directory; give a file (e.g. {str(out / 'results.jsonl')!r})")
    parent = out.parent
    if parent.exists() and not parent.is_dir():
        raise ValueError(f"{name} {str(path)!r}: {str(parent)!r} is a file, not a directory; choose another {name}")
    _make_dir(parent, name, path, "its directory")
    if out.exists():
        try:
            out.open("ab").close()
        except OSError as e:
            raise ValueError(f"{name} {str(path)!r} cannot be written ({e.strerror}); choose a writable file") from None
    else:
        _check_writable_dir(parent, f"{name} {str(path)!r}: its directory")
    return out


def _make_dir(d: Path, name: str, path, what: str) -> None:
    try:
        d.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"{name} {str(path)!r}: a parent of it is a file, not a directory; choose another "
                         f"{name}") from None
    except OSError as e:
        raise ValueError(f"{name} {str(path)!r}: cannot create {what} ({e.strerror}); choose a writable place") \
            from None


def _check_writable_dir(d: Path, what: str) -> None:
    probe = d / f".glyph-rt-probe-{os.getpid()}-{threading.get_ident()}"
    try:
        probe.open("wb").close()
        probe.unlink()
    except OSError as e:
        raise ValueError(f"{what} is not writable ({e.strerror}); choose a writable directory") from None


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    with atomic_path(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")


def save_figure(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Saves a matplotlib figure atomically and closes it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)
    return Path(path)


def cut_torn_tail(path: str | os.PathLike) -> bytes:
    """The whole lines of an append-only file; a last line without its newline (cut short by a kill) is truncated
    away on disk so that appends stay whole lines. b"" when the file does not exist."""
    path = Path(path)
    if not path.exists():
        return b""
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep != len(data):
        with open(path, "r+b") as f:
            f.truncate(keep)
        data = data[:keep]
    return data


_SURROGATE = re.compile("[\ud800-\udfff]")


def json_text(obj, indent: int | None = None) -> str:
    """JSON with UTF-8 text as is; a lone surrogate (a legal JSON escape a server or a data file may hold, not
    encodable as UTF-8) is written as its \\u escape, so the text encodes and reads back unchanged."""
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(obj, ensure_ascii=False, indent=indent))


def json_line(obj) -> str:
    """One JSONL line (json_text and a newline)."""
    return json_text(obj) + "\n"


def text_lines(text: str) -> list[str]:
    """The lines of JSONL text, split at "\n" only. str.splitlines also splits at U+2028, U+2029, U+0085 and
    other separators, which JSON written with ensure_ascii=False holds raw inside its strings."""
    lines = text.split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def json_lines(lines: Iterable[str], where: str, error: type[Exception] = ValueError) -> Iterator[tuple[int, Any]]:
    """The number (from 1) and JSON value of each non-blank line of `lines` (text_lines of a file's text); one
    that is not JSON raises error("WHERE:N: not JSON (why)")."""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise error(f"{where}:{n}: not JSON ({e.msg} column {e.colno})") from None
        yield n, value
