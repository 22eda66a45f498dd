"""Reading input text: UTF-8 with a clear error, or replacement characters that are counted."""
from __future__ import annotations

import codecs
import os
import stat
import sys
import threading
from pathlib import Path

SAMPLE_PATH = Path(__file__).resolve().parent.parent / "data" / "sample.txt"


def sample_text() -> str:
    """The built-in sample: English prose (the GNU GPLv3, Apache 2.0 and GFDL 1.3 texts, unwrapped)."""
    return SAMPLE_PATH.read_text(encoding="utf-8")


# Replacements of decode_text(errors='replace'), counted per thread: a codec error handler is registered once,
# for the whole process, and runs in the thread that decodes.
_replaced = threading.local()


def _count_replacement(e: UnicodeDecodeError) -> tuple[str, int]:
    _replaced.n += 1
    return "\ufffd", e.end


codecs.register_error("glyph_rt_count", _count_replacement)


def decode_text(data: bytes, name: str = "input", errors: str = "strict") -> tuple[str, int]:
    """Decodes UTF-8 (a BOM is dropped). errors='strict' raises naming the byte offset;
    errors='replace' substitutes U+FFFD and returns how many invalid sequences were replaced."""
    if errors not in ("strict", "replace"):
        raise ValueError(f"errors must be 'strict' or 'replace', got {errors!r}")
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    data = data[bom:]
    if errors == "strict":
        try:
            return data.decode("utf-8"), 0
        except UnicodeDecodeError as e:
            raise ValueError(  # the offset in the file, BOM included
                f"{name}: invalid UTF-8 at byte {bom + e.start} ({data[e.start:e.start + 4]!r}); fix the file or "
                "decode with errors='replace' (CLI: --errors replace), which counts every replacement"
            ) from None
    _replaced.n = 0
    text = data.decode("utf-8", errors="glyph_rt_count")
    return text, _replaced.n


def read_text(path: str, errors: str = "strict") -> tuple[str, int]:
    """Reads a file ('-' = standard input) as UTF-8; returns (text, replaced count)."""
    if path == "-":
        return decode_text(sys.stdin.buffer.read(), "stdin", errors)
    check_input(path)
    return decode_text(Path(path).read_bytes(), path, errors)


STDIN_PATHS = ("/dev/stdin", "/dev/fd/", "/proc/self/fd/")  # standard input or process substitution, <(command)


def check_input(path: str, flag: str = "input") -> None:
    """A path that reads as text to its end: a regular file, a pipe, /dev/stdin or /dev/fd/N (whatever they are
    open on). Raises FileNotFoundError, IsADirectoryError, or ValueError for a device (/dev/zero never ends) or a
    socket."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{flag}: {path!r} does not exist") from None
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(f"{flag}: {path!r} is a directory; give a text file, or '-' for standard input")
    if stat.S_ISREG(mode) or stat.S_ISFIFO(mode) or path == STDIN_PATHS[0] or path.startswith(STDIN_PATHS[1:]):
        return
    kind = "a character device" if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode) else \
        "a socket" if stat.S_ISSOCK(mode) else "not a regular file"
    raise ValueError(f"{flag}: {path!r} is {kind}, not a text file; give a file, a pipe, or '-' for standard input")
