"""A job script's text and the `#RMS`/`#SBATCH` directives at its top.

`read_script_file` and `check_script_text` make the checks Slurm makes on a batch
script (a file, `--wrap` or stdin), with messages that say how to fix it.
`parse_directives` finds the directive lines at the top of the script and splits
each into words as a shell would, without expansion (`split_words`); rsub reads
the words with the same option table as its command line (rmsbatch.cli.rsub_options).

Errors are ScriptError, whose message starts with where the problem is
(`job.sh line 3: `). Imported by `rsub` on every call: standard library only.
"""
from __future__ import annotations

import os
import stat

from rmsbatch.core.jobspec import MAX_SCRIPT_BYTES

DIRECTIVE_PREFIXES = ("#RMS", "#SBATCH")


class ScriptError(ValueError):
    """The script file or text is unusable; the message names it and, where known, the line."""


# == script checks ==========================================================
def read_script_file(path: str, *, origin: str | None = None) -> str:
    """Read and check a job script; `origin` is the name used in messages (default: path).

    The size is checked with stat() before reading, and the read itself is bounded, so
    a huge file (or a pipe that never ends) costs nothing.
    """
    name = origin or path
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ScriptError(f"{name}: no such file") from None
    except OSError as exc:
        raise ScriptError(f"{name}: cannot read the job script ({exc.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise ScriptError(f"{name}: is a directory, not a job script")
    if stat.S_ISREG(info.st_mode) and info.st_size > MAX_SCRIPT_BYTES:
        raise _too_big(name, info.st_size)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_SCRIPT_BYTES + 1)
    except OSError as exc:
        raise ScriptError(f"{name}: cannot read the job script ({exc.strerror})") from None
    if len(data) > MAX_SCRIPT_BYTES:
        raise _too_big(name, len(data))
    if b"\0" in data:
        raise _binary(name)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScriptError(
            f"{name}: not a text file (invalid UTF-8 at byte {exc.start}); is it a binary file?"
        ) from None
    check_script_text(text, name)
    return text


def check_script_text(text: str, origin: str) -> None:
    """The checks Slurm makes on a batch script, with messages that say how to fix it."""
    if not text.strip():
        raise ScriptError(f"{origin}: the job script is empty")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        # Text decoded with surrogateescape: the bytes were not UTF-8.
        raise ScriptError(f"{origin}: not a text file (invalid UTF-8); is it a binary file?") from None
    if size > MAX_SCRIPT_BYTES:
        raise _too_big(origin, size)
    if "\0" in text:
        raise _binary(origin)
    if "\r\n" in text:
        line = text.count("\n", 0, text.index("\r\n")) + 1
        raise ScriptError(
            f"{origin} line {line}: DOS line endings (\\r\\n); the shell would see a stray \\r "
            f"on every line. Convert the script with: dos2unix {origin}"
        )
    if text.startswith("\ufeff"):
        raise ScriptError(f"{origin} line 1: starts with a byte-order mark; save it without one")
    if not text.startswith("#!"):
        raise ScriptError(
            f"{origin} line 1: not a job script: the first line must start with '#!' and the "
            "path of an interpreter, e.g. #!/bin/bash"
        )


def _too_big(name: str, size: int) -> ScriptError:
    mib = 1024 * 1024
    return ScriptError(
        f"{name}: the job script is {size / mib:.1f} MiB; the limit is "
        f"{MAX_SCRIPT_BYTES // mib} MiB (keep data in files the script reads)"
    )


def _binary(name: str) -> ScriptError:
    return ScriptError(f"{name}: contains a NUL byte; is it a binary file?")


# == directives =============================================================
def parse_directives(text: str, *, origin: str | None = None) -> list[tuple[int, list[str]]]:
    """(line number, words) of each `#RMS`/`#SBATCH` line at the top of the script.

    The scan skips blank lines and comments and stops at the first line that is neither;
    directives after it are ignored, as in Slurm. A directive starts at column 0.
    """
    found = []
    for number, line in _top_lines(text):
        for prefix in DIRECTIVE_PREFIXES:
            rest = line[len(prefix):]
            if line.startswith(prefix) and (not rest or rest[0].isspace()):
                try:
                    words = split_words(rest)
                except ValueError as exc:
                    where = f"{origin} line {number}" if origin else f"line {number}"
                    raise ScriptError(f"{where}: {exc}") from None
                if words:
                    found.append((number, words))
                break
    return found


def _top_lines(text: str):
    """Lines up to the first command, lazily: a 4 MiB script is not split whole."""
    start, number = 0, 0
    while start < len(text):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end
        line = text[start:end]
        number += 1
        start = end + 1
        stripped = line.lstrip()
        if stripped and not stripped.startswith("#"):
            return
        yield number, line


def split_words(line: str) -> list[str]:
    """Split a directive like a shell would, without expansion.

    Quotes group and are removed, a backslash escapes, and an unquoted `#` ends the line
    (so the apostrophe in `# it's` opens no quote).
    """
    words: list[str] = []
    chars: list[str] = []
    in_word = False
    i, n = 0, len(line)
    while i < n:
        char = line[i]
        if char.isspace():
            if in_word:
                words.append("".join(chars))
                chars, in_word = [], False
        elif char == "#":
            break
        elif char == "'":
            close = line.find("'", i + 1)
            if close < 0:
                raise ValueError("unterminated ' quote")
            chars.append(line[i + 1:close])
            in_word, i = True, close
        elif char == '"':
            i = _read_double_quoted(line, i + 1, chars)
            in_word = True
        elif char == "\\" and i + 1 < n:
            chars.append(line[i + 1])
            in_word, i = True, i + 1
        else:
            chars.append(char)
            in_word = True
        i += 1
    if in_word:
        words.append("".join(chars))
    return words


def _read_double_quoted(line: str, i: int, chars: list[str]) -> int:
    """Append the quoted text starting at i; return the index of the closing quote."""
    while i < len(line):
        char = line[i]
        if char == '"':
            return i
        if char == "\\" and i + 1 < len(line) and line[i + 1] in '"\\$`':
            i += 1  # as in sh: only these are escaped inside double quotes
            char = line[i]
        chars.append(char)
        i += 1
    raise ValueError('unterminated " quote')


def unexpanded_variable(value: str) -> str | None:
    """`$HOME` or `${USER}` in a directive value, which no shell will expand."""
    at = value.find("$")
    while at >= 0:
        rest = value[at + 1:]
        if rest[:1] == "{" or rest[:1].isalpha() or rest[:1] == "_":
            end = 1
            while end < len(rest) and (rest[end].isalnum() or rest[end] in "_}"):
                end += 1
            return "$" + rest[:end]
        at = value.find("$", at + 1)
    return None
