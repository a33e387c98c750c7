"""Where a generated middle ends: line and block scope, the suffix overlap cut, and the file's indentation style.

The same rules end `sc2 complete` in block or line mode (a prompt is a prefix with an empty suffix).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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
        tail = self._restyle(self.pending) if self.lines_done else self._restyle_first(self.pending)
        if self.mode == "line":
            return self._trim_right_overlap(self._release("".join(h + "\n" for h in self.held) + tail))
        if self._ends_inside_suffix_overlap(tail):
            # The generation ended while writing the suffix's first lines again: they are the suffix's.
            first = next(i for i, h in enumerate(self.held) if h.strip())
            self.held = self.held[:first]
            return self._release_held(drop_trailing_blanks=True) + self._end()
        if self._held_line_leaves_block() or (tail.strip() and self.lines_done and not self.block_from_first_code
                                              and self._leaves_block(self.pending)):
            # The generation ended (a token limit, end-of-text) inside a line that has already left the block
            # (`def f(` at column 1): it is not part of the middle, however unfinished.
            return self._release_held(drop_trailing_blanks=True) + self._end()
        if tail.strip() or self.lines_done == 0:
            return self._release_held() + self._release(tail)
        return self._release_held(drop_trailing_blanks=True) + self._end()

    def _complete_line(self, line: str) -> str:
        first = self.lines_done == 0
        self.lines_done += 1
        text = self._restyle_first(line) if first else self._restyle(line)
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
        if self._held_line_leaves_block() or (not first and self._leaves_block(line)):
            self.stopped = True
            return self._release_held(drop_trailing_blanks=True) + self._end()
        out = self._release_held() + self._release(text)
        self.owed_newline = True
        return out

    def _held_line_leaves_block(self) -> bool:
        """Whether a held line (one that looked like the suffix's start, which the generation then left) has left
        the block; if so the held lines are cut before it."""
        if self.block_from_first_code:
            return False
        for i, held in enumerate(self.held):
            if held.strip() and self._leaves_block(held):
                self.held = self.held[:i]
                return True
        return False

    def _ends_inside_suffix_overlap(self, tail: str) -> bool:
        """Held lines repeat the suffix's first lines, and the unfinished last line (if any) goes on repeating it."""
        k = self._suspects()
        if not k:
            return False
        following = self.suffix_lines[k] if k < len(self.suffix_lines) else ""
        return not tail.strip() or following.startswith(tail.strip())

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

    def _restyle_first(self, line: str) -> str:
        """The first line continues the cursor's line: only when that line is blank so far does the generated text
        set its indentation, and then it takes the file's style too (the whitespace already left of the cursor
        stays as it is)."""
        indent = _INDENT.match(line).group()
        if not (self.cursor_line_blank and indent):
            return line
        whole = self.style.convert(self.cursor_line + indent)
        if whole.startswith(self.cursor_line):
            return whole[len(self.cursor_line):] + line[len(indent):]
        return self.style.convert(indent) + line[len(indent):]

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
