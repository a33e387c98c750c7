"""The file being filled in and its cursor: bytes in, bytes out.

Files are bytes. They are decoded with `surrogateescape` so that any non-UTF-8 byte survives, and CRLF is turned
into LF for the model; the bytes before and after the cursor are written back exactly as they were read, and only
the middle is encoded (with the file's own line ending).
"""

from __future__ import annotations

import ast
import difflib
from dataclasses import dataclass

from ..errors import InputError

BINARY_SNIFF = 8192
BOM = "\ufeff"  # a UTF-8 byte-order mark, as decoded: it stays first in the file and is not shown to the model


@dataclass(frozen=True)
class SourceText:
    """A file's bytes and the LF text the model sees (line i of `text` is line i of the file)."""

    data: bytes
    crlf: bool

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "input") -> "SourceText":
        if b"\x00" in data[:BINARY_SNIFF]:
            raise InputError(f"{name} looks binary (it contains NUL bytes); sc2 infill edits text files")
        if not data.strip():
            raise InputError(f"{name} is empty; there is nothing to fill in around a cursor")
        return cls(data, b"\r\n" in data)

    @property
    def raw(self) -> str:
        """The file as str, byte-exact (non-UTF-8 bytes become lone surrogates)."""
        return self.data.decode("utf-8", errors="surrogateescape")

    @property
    def text(self) -> str:
        return self.raw.replace("\r\n", "\n")

    @property
    def newline(self) -> str:
        return "\r\n" if self.crlf else "\n"


@dataclass(frozen=True)
class Cursor:
    line: int  # 1-based
    column: int  # 1-based, in characters of the line
    offset: int  # index into SourceText.raw (the byte-exact string)
    append: bool = False  # the cursor is on a new line after the last one (a newline is added before the middle)


def cursor_at(source: SourceText, line: int, column: int | None = None) -> Cursor:
    """The cursor at the end of line `line`, or before character `column` of it (both 1-based).

    `line` may be one past the last line: the middle is then appended on a new line."""
    raw = source.raw
    lines = raw.split("\n")
    if raw.endswith("\n"):
        lines.pop()  # the empty string after the final newline is not a line
    count = len(lines)
    if not 1 <= line <= count + 1:
        raise InputError(f"line {line} is outside the file (it has {count} line{'s' * (count != 1)}; "
                         f"use 1..{count + 1})", field="line")
    if line == count + 1:
        if column not in (None, 1):
            raise InputError(f"column {column} is outside line {line}, which is empty (use 1)", field="column")
        return Cursor(line, 1, len(raw), append=not raw.endswith("\n"))
    start = sum(len(x) + 1 for x in lines[: line - 1])
    content = lines[line - 1].removesuffix("\r")
    if line == 1 and content.startswith(BOM):  # a byte-order mark is no column: the cursor never goes before it
        start, content = 1, content[1:]
    if column is None:
        return Cursor(line, len(content) + 1, start + len(content))
    if not 1 <= column <= len(content) + 1:
        raise InputError(f"column {column} is outside line {line} (it has {len(content)} characters; "
                         f"use 1..{len(content) + 1})", field="column")
    return Cursor(line, column, start + column - 1)


def cursor_at_marker(source: SourceText, marker: str) -> tuple[SourceText, Cursor]:
    """Place the cursor at the first occurrence of `marker` and remove the marker from the file."""
    if not marker:
        raise InputError("the marker must not be empty", field="marker")
    raw = source.raw
    index = raw.find(marker)
    if index < 0:
        raise InputError(f"marker {marker!r} does not occur in the file", field="marker")
    data = (raw[:index] + raw[index + len(marker):]).encode("utf-8", errors="surrogateescape")
    stripped = SourceText(data, source.crlf)
    line = raw.count("\n", 0, index) + 1
    column = index - (raw.rfind("\n", 0, index) + 1) + 1 - (line == 1 and raw.startswith(BOM))
    return stripped, Cursor(line, column, index)


def split_at(source: SourceText, cursor: Cursor) -> tuple[str, str]:
    """(prefix, suffix) in the model's LF form."""
    raw = source.raw
    prefix, suffix = raw[: cursor.offset], raw[cursor.offset:]
    if cursor.append:
        prefix += "\n"
    return _model_text(prefix).removeprefix(BOM), _model_text(suffix)


def _model_text(text: str) -> str:
    """LF line endings, and U+FFFD for bytes that are not UTF-8 (the model cannot see raw bytes)."""
    text = text.replace("\r\n", "\n")
    return text.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")


def filled_bytes(source: SourceText, cursor: Cursor, middle: str) -> bytes:
    """The file with `middle` inserted at the cursor; every byte outside the middle is the original's."""
    insert = ("\n" if cursor.append else "") + middle
    if source.crlf:
        insert = insert.replace("\r\n", "\n").replace("\n", "\r\n")
    raw = source.raw
    head = raw[: cursor.offset].encode("utf-8", errors="surrogateescape")
    tail = raw[cursor.offset:].encode("utf-8", errors="surrogateescape")
    return head + insert.encode("utf-8") + tail


def unified_diff(before: bytes, after: bytes, path: str) -> bytes:
    """A unified diff that `patch` applies, byte-exact (CRLF, non-UTF-8 bytes and a missing final newline)."""
    path = path.lstrip("/")
    a = _diff_lines(before.decode("utf-8", errors="surrogateescape"))
    b = _diff_lines(after.decode("utf-8", errors="surrogateescape"))
    out = []
    for line in difflib.unified_diff(a, b, f"a/{path}", f"b/{path}", n=3):
        if line.startswith(("---", "+++")):
            out.append(line.rstrip("\n") + "\n")
        elif line.endswith("\n"):
            out.append(line)
        else:
            out.append(line + "\n\\ No newline at end of file\n")
    return "".join(out).encode("utf-8", errors="surrogateescape")


def _diff_lines(text: str) -> list[str]:
    """Lines as `patch` sees them: ended by LF only (str.splitlines would also split at a form feed, a lone CR,
    U+2028 and the like, which `patch` takes for ordinary characters)."""
    lines = [line + "\n" for line in text.split("\n")]
    lines[-1] = lines[-1][:-1]
    return lines if lines[-1] else lines[:-1]


def parses(code: bytes) -> bool:
    try:
        ast.parse(code)
        return True
    except (SyntaxError, ValueError):
        return False
