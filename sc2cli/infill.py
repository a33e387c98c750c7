"""Fill-in-the-middle on real files: where the cursor is, what the model sees, when the middle ends, and how the
result goes back into the file byte for byte.

Files are bytes. They are decoded with `surrogateescape` so that any non-UTF-8 byte survives, and CRLF is turned
into LF for the model; the bytes before and after the cursor are written back exactly as they were read, and only
the middle is encoded (with the file's own line ending).
"""

from __future__ import annotations

import ast
import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from .errors import UsageError
from .fim import ContextFile, encode_fim_prompt, psm_text, repo_context_text
from .tokenizer import Tokenizer

BINARY_SNIFF = 8192


# ---- the file and the cursor -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceText:
    """A file's bytes and the LF text the model sees (line i of `text` is line i of the file)."""

    data: bytes
    crlf: bool

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "input") -> "SourceText":
        if b"\x00" in data[:BINARY_SNIFF]:
            raise UsageError(f"{name} looks binary (it contains NUL bytes); sc2 infill edits text files")
        if not data.strip():
            raise UsageError(f"{name} is empty; nothing to fill around (use `sc2 complete` to write new code)")
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
        raise UsageError(f"--line {line} is outside the file (it has {count} line{'s' * (count != 1)}; "
                         f"use 1..{count + 1})")
    if line == count + 1:
        if column not in (None, 1):
            raise UsageError(f"--column {column} is outside line {line}, which is empty (use 1)")
        return Cursor(line, 1, len(raw), append=not raw.endswith("\n"))
    start = sum(len(x) + 1 for x in lines[: line - 1])
    content = lines[line - 1].removesuffix("\r")
    if column is None:
        return Cursor(line, len(content) + 1, start + len(content))
    if not 1 <= column <= len(content) + 1:
        raise UsageError(f"--column {column} is outside line {line} (it has {len(content)} characters; "
                         f"use 1..{len(content) + 1})")
    return Cursor(line, column, start + column - 1)


def cursor_at_marker(source: SourceText, marker: str) -> tuple[SourceText, Cursor]:
    """Place the cursor at the first occurrence of `marker` and remove the marker from the file."""
    if not marker:
        raise UsageError("--marker must not be empty")
    raw = source.raw
    index = raw.find(marker)
    if index < 0:
        raise UsageError(f"marker {marker!r} does not occur in the file")
    data = (raw[:index] + raw[index + len(marker):]).encode("utf-8", errors="surrogateescape")
    stripped = SourceText(data, source.crlf)
    line = raw.count("\n", 0, index) + 1
    column = index - (raw.rfind("\n", 0, index) + 1) + 1
    return stripped, Cursor(line, column, index)


def split_at(source: SourceText, cursor: Cursor) -> tuple[str, str]:
    """(prefix, suffix) in the model's LF form."""
    raw = source.raw
    prefix, suffix = raw[: cursor.offset], raw[cursor.offset:]
    if cursor.append:
        prefix += "\n"
    return _model_text(prefix), _model_text(suffix)


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


# ---- the prompt and its token budget --------------------------------------------------------------------------------


@dataclass
class Truncation:
    dropped_context: list[str] = field(default_factory=list)
    prefix_chars_cut: int = 0
    suffix_chars_cut: int = 0

    @property
    def any(self) -> bool:
        return bool(self.dropped_context or self.prefix_chars_cut or self.suffix_chars_cut)

    def describe(self) -> str:
        parts = []
        if self.dropped_context:
            parts.append(f"left out {len(self.dropped_context)} context file(s): {', '.join(self.dropped_context)}")
        if self.prefix_chars_cut:
            parts.append(f"cut {self.prefix_chars_cut} characters from the start of the prefix")
        if self.suffix_chars_cut:
            parts.append(f"cut {self.suffix_chars_cut} characters from the end of the suffix")
        return "; ".join(parts)

    def to_json(self) -> dict:
        return {"dropped_context": self.dropped_context, "prefix_chars_cut": self.prefix_chars_cut,
                "suffix_chars_cut": self.suffix_chars_cut}


@dataclass
class Prompt:
    ids: list[int]
    text: str  # with the special tokens written out
    prefix: str
    suffix: str
    truncation: Truncation


def build_prompt(tokenizer: Tokenizer, prefix: str, suffix: str, budget: int, path: str | None = None,
                 context: Sequence[ContextFile] = (), repo_name: str | None = None) -> Prompt:
    """The FIM prompt, made to fit `budget` tokens: context files go first, then prefix and suffix are cut from
    their far ends (whole lines, about 3:1 in favour of the prefix)."""
    context = list(context)
    truncation = Truncation()

    def encode() -> list[int]:
        return encode_fim_prompt(tokenizer, prefix, suffix, path if (context or repo_name) else None, context,
                                 repo_name)

    ids = encode()
    while len(ids) > budget and context:
        truncation.dropped_context.append(context.pop().path)
        ids = encode()
    if len(ids) > budget:
        fixed = len(ids) - len(tokenizer.encode_text(prefix)) - len(tokenizer.encode_text(suffix))
        room = budget - fixed
        full_prefix, full_suffix = prefix, suffix
        while len(ids) > budget:
            if room < 2:
                raise UsageError(f"the token budget ({budget}) is too small for this prompt; "
                                 "lower --max-new-tokens or drop --context/--repo-name")
            suffix_room = min(room // 4, len(tokenizer.encode_text(full_suffix)))
            prefix = _keep_tail(tokenizer, full_prefix, room - suffix_room)
            suffix = _keep_head(tokenizer, full_suffix, room - len(tokenizer.encode_text(prefix)))
            ids = encode()
            # "path\n" is encoded together with the prefix, so the count may be off by a token or two: shrink.
            room -= max(1, len(ids) - budget)
        truncation.prefix_chars_cut = len(full_prefix) - len(prefix)
        truncation.suffix_chars_cut = len(full_suffix) - len(suffix)
    head = path if (context or repo_name) else None
    text = repo_context_text(context, repo_name) + psm_text(prefix, suffix, head)
    return Prompt(ids, text, prefix, suffix, truncation)


def _keep_tail(tokenizer: Tokenizer, text: str, limit: int) -> str:
    """The longest run of whole lines at the end of `text` that fits `limit` tokens."""
    lines = text.splitlines(keepends=True)
    lo, hi = 0, len(lines)  # binary search on how many leading lines to drop
    while lo < hi:
        mid = (lo + hi) // 2
        if len(tokenizer.encode_text("".join(lines[mid:]))) <= limit:
            hi = mid
        else:
            lo = mid + 1
    kept = "".join(lines[lo:])
    if lo == len(lines) and lines:  # not even the last line fits: keep its tail characters
        kept = _fit_chars(tokenizer, lines[-1], limit, from_end=True)
    return kept


def _keep_head(tokenizer: Tokenizer, text: str, limit: int) -> str:
    lines = text.splitlines(keepends=True)
    lo, hi = 0, len(lines)  # binary search on how many lines to keep
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(tokenizer.encode_text("".join(lines[:mid]))) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return "".join(lines[:lo])


def _fit_chars(tokenizer: Tokenizer, line: str, limit: int, from_end: bool) -> str:
    for start in range(len(line) + 1):
        piece = line[start:] if from_end else line[: len(line) - start]
        if len(tokenizer.encode_text(piece)) <= limit:
            return piece
    return ""


def token_budget(config) -> int:
    """Tokens a FIM prompt plus its middle may use: the context, and no more than the sliding window, so the end
    of the prefix stays in direct view of the tokens being generated."""
    budget = config.max_position_embeddings
    return min(budget, config.sliding_window) if config.sliding_window else budget


# ---- when the middle ends ------------------------------------------------------------------------------------------

_INDENT = re.compile(r"[ \t]*")


def choose_mode(mode: str, suffix: str) -> str:
    """auto: `line` when there is code right of the cursor, else `block`."""
    if mode != "auto":
        return mode
    return "line" if suffix.split("\n", 1)[0].strip() else "block"


@dataclass(frozen=True)
class IndentStyle:
    tabs: bool
    width: int

    @classmethod
    def detect(cls, text: str) -> "IndentStyle":
        tab_lines = space_lines = 0
        widths: dict[int, int] = {}
        previous = 0
        for line in text.split("\n"):
            if not line.strip():
                continue
            indent = _INDENT.match(line).group()
            if indent.startswith("\t"):
                tab_lines += 1
            elif indent:
                space_lines += 1
                step = abs(len(indent) - previous)
                if step:
                    widths[step] = widths.get(step, 0) + 1
            previous = len(indent) if not indent.startswith("\t") else previous
        width = max(widths, key=widths.get) if widths else 4
        return cls(tabs=tab_lines > space_lines, width=width)

    def convert(self, indent: str) -> str:
        """Re-write one line's leading whitespace in this style."""
        if self.tabs:
            spaces = indent.replace("\t", " " * self.width)
            return "\t" * (len(spaces) // self.width) + " " * (len(spaces) % self.width)
        return indent.replace("\t", " " * self.width)


class MiddleFilter:
    """Decides, line by line, when the generated middle is complete.

    - `line` mode: ends at the first newline that follows non-blank text (the newline is not part of it);
    - `block` mode: ends before the first line that leaves the cursor's indentation block;
    - both: end where the generated text runs into the start of the suffix (the suffix's first non-blank lines
      reappear), and rewrite each new line's indentation in the file's style (tabs or spaces).
    A line is released once it is whole (only then do we know whether it is kept), and its newline only once
    the next line is kept too, so the streamed text is exactly the final middle: in particular it never ends
    in a newline right before a suffix that starts with one.
    """

    def __init__(self, mode: str, prefix: str, suffix: str, style: IndentStyle) -> None:
        self.mode = mode
        self.style = style
        cursor_line = prefix.rsplit("\n", 1)[-1]
        right = suffix.split("\n", 1)[0]
        self.cursor_line = cursor_line
        self.cursor_line_blank = not cursor_line.strip()
        self.base_indent = _width(cursor_line, style)
        # A blank cursor line says little about the block (editors strip the indentation of empty lines, so a blank
        # line inside a function body sits at column 1): there the first line of code written sets the block.
        self.block_from_first_code = self.cursor_line_blank
        # After `def f():` (and nothing right of the cursor) the block is the new body: it ends at the opener's
        # indentation. Anywhere else it ends at anything indented less than the cursor's line.
        self.opens_block = cursor_line.rstrip().endswith((":", "{", "(", "[")) and not right.strip()
        self.right_of_cursor = right.rstrip()  # leading spaces kept: they are the file's own
        self.suffix_opens_line = suffix.startswith("\n")
        self.suffix_lines = [line.strip() for line in suffix.split("\n")[1:] if line.strip()][:2]
        self.pending = ""  # the current, incomplete line
        self.held: list[str] = []  # whole lines held back: leading blank lines, or a suspected suffix overlap
        self.lines_done = 0
        self.owed_newline = False  # the last released line's newline, not yet emitted
        self.stopped = False

    def feed(self, delta: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        out = ""
        self.pending += delta
        while "\n" in self.pending and not self.stopped:
            line, self.pending = self.pending.split("\n", 1)
            out += self._complete_line(line)
        return out, self.stopped

    def flush(self) -> str:
        if self.stopped:
            return ""
        self.stopped = True
        tail = self._restyle(self.pending) if self.lines_done else self.pending
        if self.mode == "line":
            return self._trim_right_overlap(self._release("".join(h + "\n" for h in self.held) + tail))
        if tail.strip() or self.lines_done == 0:
            return self._release_held() + self._release(tail)
        return self._release_held(drop_trailing_blanks=True) + self._end()

    def _complete_line(self, line: str) -> str:
        first = self.lines_done == 0
        self.lines_done += 1
        text = line if first else self._restyle(line)
        has_code = bool(line.strip())
        if self.mode == "line":
            if has_code:
                self.stopped = True
                return self._trim_right_overlap(self._release("".join(h + "\n" for h in self.held) + text))
            self.held.append(text)  # blank lines before the line's code
            return ""
        if not has_code:
            self.held.append(text)  # kept only if code follows inside the block
            return ""
        if (not first or self.cursor_line_blank) and self._continues_suffix(line):
            self.held.append(text)
            if self._suspects() == len(self.suffix_lines):
                self.stopped = True  # the suffix's opening lines reappeared: the middle ends before them
                return self._end()
            return ""
        if self.block_from_first_code:
            self.block_from_first_code = False
            self.base_indent = max(self.base_indent, _width(self.cursor_line + line if first else line, self.style))
        if not first and self._leaves_block(line):
            self.stopped = True
            return self._release_held(drop_trailing_blanks=True) + self._end()
        out = self._release_held() + self._release(text)
        self.owed_newline = True
        return out

    def _suspects(self) -> int:
        return sum(1 for h in self.held if h.strip())

    def _release_held(self, drop_trailing_blanks: bool = False) -> str:
        held = self.held
        if drop_trailing_blanks:
            while held and not held[-1].strip():
                held = held[:-1]
        out = ""
        for h in held:
            out += self._release(h)
            self.owed_newline = True
        self.held = []
        return out

    def _release(self, text: str) -> str:
        out = ("\n" if self.owed_newline else "") + text
        self.owed_newline = False
        return out

    def _end(self) -> str:
        """The newline after the last kept line belongs to the middle unless the suffix brings its own."""
        out = "\n" if self.owed_newline and not self.suffix_opens_line else ""
        self.owed_newline = False
        return out

    def _leaves_block(self, line: str) -> bool:
        indent = _width(line, self.style)
        return indent <= self.base_indent if self.opens_block else indent < self.base_indent

    def _continues_suffix(self, line: str) -> bool:
        k = sum(1 for h in self.held if h.strip())
        return k < len(self.suffix_lines) and line.strip() == self.suffix_lines[k]

    def _restyle(self, line: str) -> str:
        indent = _INDENT.match(line).group()
        return self.style.convert(indent) + line[len(indent):]

    def _trim_right_overlap(self, text: str) -> str:
        """Line mode: drop a tail that repeats the code right of the cursor (e.g. a closing bracket)."""
        right = self.right_of_cursor
        body = text.rstrip()
        if right.strip() and body.endswith(right):
            return body[: -len(right)]  # `f(` + `a, x)` before `x)` is `a, `: the space is the model's
        if right.strip() and body.endswith(right.strip()):
            return body[: -len(right.strip())].rstrip()  # written with other spacing: the suffix brings its own
        return text


def _width(line: str, style: IndentStyle) -> int:
    return len(_INDENT.match(line).group().expandtabs(style.width))
