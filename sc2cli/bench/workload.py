"""What `sc2 bench serve` sends, and the checkpoints it sends it to.

The texts are windows of real files of this Python's standard library, cut at whole lines the way an editor plugin
cuts them (llama.vim sends up to 256 lines above the cursor and 64 below): about `tokens` tokens of the model's own
tokenizer, three quarters of them before the cursor. The cursor sits on a fresh line inside a function body, where
a real one-line statement of the file belongs; that statement is what the editing flow types, one character per
request (`Window.prefix(k)`).

The checkpoints: the shipped model, a checkpoint folder, or random weights of a named shape (checkpoints.py). Random
weights have no tokenizer, and the server needs one that covers the whole vocabulary (a smaller one would leave
most generated ids without text, and nothing would stream): a byte-level BPE of the shape's vocabulary size is
trained once on the training split of the standard library, as `sc2 train` trains the shipped model's, and saved
as tokenizer.json beside the weights.
"""

from __future__ import annotations

import ast
import os
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..tokenizer import Tokenizer
from .checkpoints import random_checkpoint, shape_config

EDIT_FILE = "textwrap.py"  # the file of llama.cpp's measured editing flow (spec serving-protocols.md §8)
CONCURRENT_FILES = ("difflib.py", "argparse.py", "configparser.py", "shlex.py")  # one per client, round robin
WARM_UP_FILE = "pprint.py"  # a server's first request: another file, so that no measured request reuses it
BEFORE_SHARE = 0.75  # of a window's tokens, the part above the cursor (spec §8: 6,000 + 2,000 characters)
# One-line statements a function body is made of (compound statements and docstrings are not typed).
SIMPLE_STATEMENTS = (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Expr, ast.Return, ast.Raise, ast.Assert,
                     ast.Delete)


@dataclass(frozen=True)
class Window:
    """Whole lines of `path`, from line `first_line` on: `before`, then the cursor's line, where `indent` is
    already there and `typed` is going to be typed, then `after` (which starts with the line break)."""

    path: str
    first_line: int  # 1-based, in the original file
    before: str
    indent: str
    typed: str
    after: str

    def prefix(self, typed_chars: int = 0) -> str:
        """The text before the cursor once `typed_chars` characters of the statement are typed."""
        return self.before + self.indent + self.typed[:typed_chars]

    def text(self, typed_chars: int = 0) -> str:
        return self.prefix(typed_chars) + self.after

    @property
    def cursor_line(self) -> int:
        """The cursor's line, 1-based, in the window's text."""
        return self.before.count("\n") + 1

    def describe(self) -> dict:
        return {"path": self.path, "first_line": self.first_line,
                "lines": self.text().count("\n") + (not self.text().endswith("\n")),
                "cursor_line": self.cursor_line, "typed": self.indent + self.typed}


def stdlib_file(name: str) -> tuple[str, str]:
    """(name, text) of a file of this Python's standard library."""
    path = Path(sysconfig.get_paths()["stdlib"]) / name
    try:
        return name, path.read_text(encoding="utf-8")
    except OSError as err:
        raise InputError(f"the benchmark reads {path} of the standard library: {err.strerror}") from None


def statement_lines(source: str, min_chars: int) -> list[int]:
    """1-based numbers of the lines holding one whole simple statement inside a function (docstrings and other
    bare constants left out) with at least `min_chars` characters after the indentation."""
    lines = source.splitlines()
    found = set()
    for function in ast.walk(ast.parse(source)):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(function):
            if (isinstance(node, SIMPLE_STATEMENTS) and node.lineno == node.end_lineno
                    and not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))):
                line = lines[node.lineno - 1]
                content = line.strip()
                statement = line.encode()[node.col_offset:node.end_col_offset].decode(errors="replace")
                if len(content) >= min_chars and content == statement:  # alone on its line, no comment after it
                    found.add(node.lineno)
    return sorted(found)


def windows(tokenizer: Tokenizer, name: str, source: str, tokens: int, count: int, min_chars: int,
            before_share: float = BEFORE_SHARE) -> list[Window]:
    """Up to `count` windows of about `tokens` tokens, each around another statement of `source`, spread over the
    file; the first around the first statement with a full share of text above it."""
    lines = source.splitlines(keepends=True)
    want_before = round(tokens * before_share)
    want_after = tokens - want_before
    above = 0  # tokens above each line, counted line by line (a slight overcount: enough to choose candidates)
    enough = set()
    for number, line in enumerate(lines, 1):
        if above >= want_before:
            enough.add(number)
        above += len(tokenizer.encode_text(line))
    candidates = [n for n in statement_lines(source, min_chars) if n in enough]
    if not candidates:
        raise InputError(f"{name} has no statement of {min_chars}+ characters inside a function with {want_before} "
                         "tokens above it; ask for fewer tokens or keystrokes")
    step = max(1, len(candidates) // count)
    return [_window(tokenizer, name, lines, line - 1, want_before, want_after)
            for line in candidates[::step][:count]]


def _window(tokenizer: Tokenizer, name: str, lines: list[str], index: int, want_before: int,
            want_after: int) -> Window:
    def fits(start: int, end: int, limit: int) -> bool:
        return len(tokenizer.encode_text("".join(lines[start:end]))) <= limit

    lo, hi = 0, index  # the first line: the smallest start whose text up to the cursor fits want_before
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid, index, want_before) else (mid + 1, hi)
    first = lo
    lo, hi = index + 1, len(lines)  # the end: the largest whose text after the cursor fits want_after
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(index + 1, mid, want_after) else (lo, mid - 1)
    line = lines[index].rstrip("\r\n")
    content = line.lstrip()
    after = "".join(lines[index + 1:lo]).removesuffix("\n")
    return Window(name, first + 1, "".join(lines[first:index]), line[: len(line) - len(content)], content,
                  "\n" + after)


def editing_window(tokenizer: Tokenizer, tokens: int, keystrokes: int) -> Window:
    """The editing flow's window of textwrap.py: its statement has at least `keystrokes` characters to type."""
    name, source = stdlib_file(EDIT_FILE)
    return windows(tokenizer, name, source, tokens, 1, max(keystrokes, 1))[0]


def warm_up_window(tokenizer: Tokenizer, tokens: int) -> Window:
    name, source = stdlib_file(WARM_UP_FILE)
    return windows(tokenizer, name, source, tokens, 1, 1)[0]


def concurrent_windows(tokenizer: Tokenizer, tokens: int, clients: int, per_client: int) -> list[list[Window]]:
    """Each client's requests: windows around different statements of its own file (clients beyond the number of
    files share one, taking every other statement)."""
    groups = -(-clients // len(CONCURRENT_FILES))
    out = []
    for client in range(clients):
        name, source = stdlib_file(CONCURRENT_FILES[client % len(CONCURRENT_FILES)])
        found = windows(tokenizer, name, source, tokens, per_client * groups, 1)
        mine = found[client // len(CONCURRENT_FILES)::groups] or found
        out.append([mine[i % len(mine)] for i in range(per_client)])
    return out


# ---- checkpoints --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Served:
    """A checkpoint the benchmark serves: where it is, what the tables call it, and its tokenizer."""

    key: str  # the shape name, or the --model reference
    label: str
    path: Path
    model_arg: str  # what `-m` gets
    parameters: int
    tokenizer_note: str | None = None


def served_checkpoint(key: str, dtype: str, progress: Callable[[str], None]) -> Served:
    """The shipped model ("shipped"), random weights of a named shape (with a tokenizer of their vocabulary), or
    any checkpoint folder or Hub id sc2 loads."""
    from .. import hub
    from ..settings import SHIPPED_MODEL

    if key == "shipped":
        path = hub.shipped_model_dir()
        return Served(key, f"shipped {SHIPPED_MODEL}", path, SHIPPED_MODEL, parameter_count(path))
    try:
        shape_config(key)
    except ValueError:
        path = hub.resolve(key)
        return Served(key, key, path, str(path), parameter_count(path))
    path, _ = random_checkpoint(key, dtype, progress=progress)
    vocab = shape_config(key).vocab_size
    note = ensure_tokenizer(path, vocab, progress)
    return Served(key, f"shape {key}, random weights", path, str(path), parameter_count(path), note)


def ensure_tokenizer(folder: Path, vocab_size: int, progress: Callable[[str], None]) -> str:
    """A tokenizer.json of exactly `vocab_size` tokens in `folder` (trained now when missing); what it is."""
    note = f"{vocab_size:,}-token BPE trained on the stdlib's training split"
    path = folder / "tokenizer.json"
    try:
        if Tokenizer.from_file(path).vocab_size == vocab_size:
            return note
    except (OSError, ValueError):
        pass
    from ..train import data as trainset
    from ..train.bpe import train_bpe
    from ..train.trainer import stdlib_dir

    progress(f"training a {vocab_size:,}-token BPE for the random weights, once (about 20 s), into {path}")
    train_files, _ = trainset.split_files(trainset.collect_files(stdlib_dir()))
    tokenizer = train_bpe((f.text for f in train_files), vocab_size)
    tmp = path.with_name(path.name + ".tmp")
    tokenizer.save(str(tmp))
    os.replace(tmp, path)
    return note


def parameter_count(folder: Path) -> int:
    """Parameters stored in the checkpoint's safetensors files (a tied head counted once), from their headers."""
    import json
    import struct

    total = 0
    for file in sorted(Path(folder).glob("*.safetensors")):
        with open(file, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        for name, entry in header.items():
            if name != "__metadata__":
                count = 1
                for dim in entry["shape"]:
                    count *= dim
                total += count
    return total
