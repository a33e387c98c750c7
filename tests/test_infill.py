"""`sc2 infill` (issue 5): the cursor, the exact FIM prompt, when the middle ends, the token budget, byte-exact
writes and diffs, best-of-n ranking, --dry-run and repository context.

Most tests are pure functions on the test tokenizer. CLI tests run `sc2cli.cli.main` in-process (the real error
mapping: exit codes and one stderr line) on a real tiny checkpoint whose config and tokenizer load for real; where
the model's output matters, only the weights are replaced by a `ScriptedModel` that emits a fixed token script.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from checkpoints import make_checkpoint
from cli_helpers import assert_one_line_error, isolated_env, run_sc2
from scripted import ScriptedModel
from tokenizer_fixture import build_test_tokenizer
from typer.testing import CliRunner

from sc2cli import files
from sc2cli.fim import prompt as prompting, scope
from sc2cli.fim import source as fim_source
from sc2cli.cli import common, main
from sc2cli.fim.pipeline import rank as rank_candidates
from sc2cli.generation.engine import Completion
from sc2cli.errors import InputError
from sc2cli.fim.formats import ContextFile
from sc2cli.checkpoint import Loaded, load_config
from sc2cli.tokenizer import BOUNDARY_TOKENS, SPECIAL_TOKENS, Tokenizer

BIG = 10**6  # a budget nothing reaches


# ---- helpers ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer(build_test_tokenizer())


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    # No sliding window: the infill budget is min(context, window), and the helper's default window (32) is too small.
    return make_checkpoint(tmp_path_factory.mktemp("infill-ckpt"), sliding_window=None, seed=3)


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    for key, value in isolated_env(home).items():
        monkeypatch.setenv(key, value)
    return home


def fim_ids(tok: Tokenizer, prefix: str, suffix: str) -> list[int]:
    """The PSM prompt's ids, built independently of sc2cli.fim."""
    return ([tok.token_id("<fim_prefix>")] + tok.encode_text(prefix) + [tok.token_id("<fim_suffix>")]
            + tok.encode_text(suffix) + [tok.token_id("<fim_middle>")])


def fim_text(prefix: str, suffix: str) -> str:
    return f"<fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>"


@dataclass
class Run:
    code: int
    out: bytes
    err: str

    @property
    def stdout(self) -> str:
        return self.out.decode("utf-8", "surrogateescape")

    def one_line_error(self, code: int, *needles: str) -> str:
        assert self.code == code, (self.code, self.err)
        assert "Traceback" not in self.err, self.err
        lines = [line for line in self.err.splitlines() if line.strip()]
        assert len(lines) == 1, self.err
        for needle in needles:
            assert needle in lines[0], (needle, lines[0])
        return lines[0]


def sc2(args: list[str], input: bytes | None = None) -> Run:
    """`sc2 ARGS` in-process through `main` (exit-code and one-line-error mapping included)."""
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with CliRunner().isolation(input=input) as (out, err, _):
            try:
                main(["infill", *args])
                code = 0
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
            sys.stdout.flush()
            sys.stderr.flush()
            return Run(code, out.getvalue(), err.getvalue().decode("utf-8", "replace"))
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture
def no_weights(monkeypatch):
    """Fail the test if anything loads model weights."""

    def refuse(*args, **kwargs):
        raise AssertionError("model weights were loaded")

    monkeypatch.setattr(common, "load_model", refuse)
    monkeypatch.setattr("sc2cli.checkpoint.load", refuse)
    monkeypatch.setattr("sc2cli.checkpoint.load_model", refuse)


@pytest.fixture
def scripted(monkeypatch, ckpt):
    """`scripted(text)`: the model emits `text`'s tokens (special-token strings in it become their ids, so
    "x<file_sep>" scripts a real <file_sep> token). Returns a list that records each load."""
    config = load_config(ckpt)
    tokenizer = Tokenizer.from_dir(ckpt)
    loads: list[list[int]] = []

    def use(text: str) -> list[list[int]]:
        ids = tokenizer.encode(text)

        def fake_load_model(*args, **kwargs):
            loads.append(ids)
            return Loaded(model=ScriptedModel(config, ids), tokenizer=tokenizer, path=ckpt, name="scripted",
                          load_seconds=0.0)

        monkeypatch.setattr(common, "load_model", fake_load_model)
        return loads

    return use


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ---- 1. the cursor and the exact prompt ------------------------------------------------------------------------

# (file bytes, line, column, prefix, suffix, middle, filled bytes, append)
CURSORS = {
    "start of file": (b"import os\nx = 1\n", 1, 1, "", "import os\nx = 1\n", "X", b"Ximport os\nx = 1\n", False),
    "end of the last line": (b"import os\nx = 1\n", 2, None, "import os\nx = 1", "\n", "X",
                             b"import os\nx = 1X\n", False),
    "end of file (after the final newline)": (b"import os\nx = 1\n", 3, None, "import os\nx = 1\n", "", "y = 2\n",
                                              b"import os\nx = 1\ny = 2\n", False),
    "blank indented line": (b"def f():\n    \n    return 1\n", 2, None, "def f():\n    ", "\n    return 1\n",
                            "x = 1", b"def f():\n    x = 1\n    return 1\n", False),
    "middle of a line": (b"x = foo(a, b)\n", 1, 9, "x = foo(", "a, b)\n", "1, ", b"x = foo(1, a, b)\n", False),
    "last line without a trailing newline": (b"a = 1\nb = 2", 2, None, "a = 1\nb = 2", "", " + 1",
                                             b"a = 1\nb = 2 + 1", False),
    "append after a last line without newline": (b"a = 1\nb = 2", 3, None, "a = 1\nb = 2\n", "", "c = 3",
                                                 b"a = 1\nb = 2\nc = 3", True),
    "append, column 1": (b"a = 1\nb = 2", 3, 1, "a = 1\nb = 2\n", "", "c = 3\n", b"a = 1\nb = 2\nc = 3\n", True),
    "CRLF": (b"def f():\r\n    \r\n    return 1\r\n", 2, None, "def f():\n    ", "\n    return 1\n",
             "x = 1\n    y = 2", b"def f():\r\n    x = 1\r\n    y = 2\r\n    return 1\r\n", False),
    "CRLF, column": (b"ab = 1\r\ncd = 2\r\n", 2, 3, "ab = 1\ncd", " = 2\n", "e", b"ab = 1\r\ncde = 2\r\n", False),
    "CRLF append without newline": (b"a = 1\r\nb = 2", 3, None, "a = 1\nb = 2\n", "", "c = 3",
                                    b"a = 1\r\nb = 2\r\nc = 3", True),
    "tabs": (b"def f():\n\tif x:\n\t\t\n\treturn 1\n", 3, None, "def f():\n\tif x:\n\t\t", "\n\treturn 1\n",
             "y()", b"def f():\n\tif x:\n\t\ty()\n\treturn 1\n", False),
    "non-UTF-8 bytes": (b"# caf\xe9 \xff\xfe\nx = 1\n\ny = 2\n", 3, None, "# caf\ufffd \ufffd\ufffd\nx = 1\n",
                        "\ny = 2\n", "z = 3", b"# caf\xe9 \xff\xfe\nx = 1\nz = 3\ny = 2\n", False),
    "non-UTF-8 bytes, cursor inside their line": (b"# caf\xe9 \xff\xfe\nx = 1\n", 1, 7, "# caf\ufffd",
                                                  " \ufffd\ufffd\nx = 1\n", "!", b"# caf\xe9! \xff\xfe\nx = 1\n",
                                                  False),
    "multi-byte characters count as one column": ("s = 'h\u00e9llo'\n".encode(), 1, 8, "s = 'h\u00e9", "llo'\n",
                                                  "\u00e9", "s = 'h\u00e9\u00e9llo'\n".encode(), False),
    "literal <fim_prefix> in the file": (b's = "<fim_prefix>"\n\nt = 1\n', 2, None, 's = "<fim_prefix>"\n',
                                         "\nt = 1\n", "u = 0", b's = "<fim_prefix>"\nu = 0\nt = 1\n', False),
}


@pytest.mark.parametrize("case", list(CURSORS), ids=list(CURSORS))
def test_exact_prompt_and_bytes_for_each_cursor(tok, case):
    data, line, column, prefix, suffix, middle, filled, append = CURSORS[case]
    source = fim_source.SourceText.from_bytes(data)
    cursor = fim_source.cursor_at(source, line, column)
    assert cursor.line == line and cursor.append is append
    assert fim_source.split_at(source, cursor) == (prefix, suffix)
    prompt = prompting.build_prompt(tok, prefix, suffix, BIG)
    assert prompt.ids == fim_ids(tok, prefix, suffix)
    assert prompt.text == fim_text(prefix, suffix)
    assert (prompt.prefix, prompt.suffix) == (prefix, suffix)
    assert not prompt.truncation.any
    assert fim_source.filled_bytes(source, cursor, middle) == filled


def test_model_text_is_lf_and_utf8_while_the_bytes_are_kept(tok):
    source = fim_source.SourceText.from_bytes(b"a = 1\r\n# \xff\r\n\r\nb = 2\r\n")
    assert source.crlf and source.newline == "\r\n"
    prefix, suffix = fim_source.split_at(source, fim_source.cursor_at(source, 3))
    assert "\r" not in prefix + suffix
    assert prefix == "a = 1\n# \ufffd\n" and suffix == "\nb = 2\n"
    prompt = prompting.build_prompt(tok, prefix, suffix, BIG)
    assert tok.decode(prompt.ids) == fim_text(prefix, suffix)
    filled = fim_source.filled_bytes(source, fim_source.cursor_at(source, 3), "c = [\n  1,\r\n]")
    assert filled == b"a = 1\r\n# \xff\r\nc = [\r\n  1,\r\n]\r\nb = 2\r\n"


def test_file_text_never_becomes_a_special_token(tok):
    prefix, suffix = 'a = "<fim_prefix><file_sep>"\n', '\nb = "<fim_middle><|endoftext|>"\n'
    ids = prompting.build_prompt(tok, prefix, suffix, BIG).ids
    for name in ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"):
        assert ids.count(tok.token_id(name)) == 1, name
    for name in ("<file_sep>", "<|endoftext|>"):
        assert tok.token_id(name) not in ids
    # The check is meaningful: the special-aware encoder would have turned the text into markers.
    assert tok.token_id("<fim_prefix>") in tok.encode(prefix)


def test_empty_prefix_and_suffix(tok):
    prompt = prompting.build_prompt(tok, "", "", BIG)
    assert prompt.ids == [tok.token_id("<fim_prefix>"), tok.token_id("<fim_suffix>"), tok.token_id("<fim_middle>")]
    assert prompt.text == "<fim_prefix><fim_suffix><fim_middle>"
    # A file that is only the marker is the same prompt.
    source, cursor = fim_source.cursor_at_marker(fim_source.SourceText.from_bytes(b"<CURSOR>"), "<CURSOR>")
    assert fim_source.split_at(source, cursor) == ("", "")
    assert fim_source.filled_bytes(source, cursor, "x = 1\n") == b"x = 1\n"


@pytest.mark.parametrize("data", [b"", b"  \n\n", b"\r\n"])
def test_empty_file_is_refused(data):
    with pytest.raises(InputError, match="empty"):
        fim_source.SourceText.from_bytes(data)


def test_marker_places_the_cursor_and_is_removed(tok):
    source = fim_source.SourceText.from_bytes(b"def f(x):\r\n    return <CURSOR> + 1\r\n<CURSOR>\r\n")
    stripped, cursor = fim_source.cursor_at_marker(source, "<CURSOR>")
    assert stripped.data == b"def f(x):\r\n    return  + 1\r\n<CURSOR>\r\n"  # only the first occurrence
    assert stripped.crlf
    assert (cursor.line, cursor.column, cursor.append) == (2, 12, False)
    assert fim_source.split_at(stripped, cursor) == ("def f(x):\n    return ", " + 1\n<CURSOR>\n")
    assert fim_source.filled_bytes(stripped, cursor, "x") == b"def f(x):\r\n    return x + 1\r\n<CURSOR>\r\n"
    # The same cursor as --line/--column gives.
    assert fim_source.cursor_at(stripped, 2, 12) == cursor
    with pytest.raises(InputError, match="does not occur"):
        fim_source.cursor_at_marker(source, "<NOPE>")
    with pytest.raises(InputError, match="empty"):
        fim_source.cursor_at_marker(source, "")


@pytest.mark.parametrize("data, line, column, needle, field", [
    (b"a = 1\nb = 2\n", 0, None, "^line 0 is outside", "line"),
    (b"a = 1\nb = 2\n", 4, None, "^line 4 is outside", "line"),
    (b"a = 1\nb = 2", 4, None, "use 1..3", "line"),
    (b"a = 1\nb = 2\n", -1, None, "^line -1 is outside", "line"),
    (b"a = 1\nb = 2\n", 1, 0, "^column 0 is outside", "column"),
    (b"a = 1\nb = 2\n", 1, 7, "^column 7 is outside", "column"),
    (b"ab\r\n", 1, 4, "^column 4 is outside", "column"),  # the CR is not a column
    (b"a = 1\nb = 2\n", 3, 2, "^column 2 is outside", "column"),
])
def test_line_or_column_outside_the_file_is_an_input_error(data, line, column, needle, field):
    """The core speaks of the problem and names the request field; no CLI flag appears in its message."""
    with pytest.raises(InputError, match=needle) as raised:
        fim_source.cursor_at(fim_source.SourceText.from_bytes(data), line, column)
    assert raised.value.field == field and "--" not in str(raised.value)


@pytest.mark.parametrize("args, needle", [
    (["--line", "9"], "--line: line 9 is outside the file"),
    (["--line", "1", "--column", "40"], "--column: column 40 is outside line 1"),
    (["--marker", "<HERE>"], "does not occur"),
])
def test_cli_cursor_outside_the_file_exits_2(tmp_path, home, ckpt, no_weights, args, needle):
    path = write(tmp_path / "a.py", b"x = 1\ny = 2\n")
    sc2([str(path), *args, "-m", str(ckpt)]).one_line_error(2, needle)


@pytest.mark.slow
def test_cli_through_the_real_entry_point(tmp_path):
    """The installed `sc2` script: usage errors are exit 2 and one line, before anything heavy runs."""
    path = write(tmp_path / "a.py", b"x = 1\n")
    assert_one_line_error(run_sc2(["infill", str(path), "--line", "3"], tmp_path, timeout=60), 2, "--line: line 3")


# ---- 2. stop tokens never reach the output ---------------------------------------------------------------------


@pytest.mark.parametrize("stop", BOUNDARY_TOKENS)
@pytest.mark.parametrize("output_flag", [[], ["--no-stream"], ["--json"]])
def test_stop_tokens_end_the_middle_and_are_never_printed(tmp_path, home, ckpt, scripted, stop, output_flag):
    path = write(tmp_path / "mod.py", b"a = 0\n\nb = 2\n")
    loads = scripted(f"x = 1{stop}leak()\n<|endoftext|>")
    run = sc2([str(path), "--line", "2", "-m", str(ckpt), "--max-new-tokens", "30", *output_flag])
    assert run.code == 0, run.err
    assert len(loads) == 1 and Tokenizer.from_dir(ckpt).token_id(stop) in loads[0]
    if output_flag == ["--json"]:
        result = json.loads(run.out)
        assert result["middle"] == "x = 1" and result["finish_reason"] == "stop"
        assert result["mode"] == "block" and result["cursor"] == {"line": 2, "column": 1, "append": False}
    else:
        assert run.stdout == "x = 1"
    assert not any(special in run.stdout for special in SPECIAL_TOKENS)
    assert path.read_bytes() == b"a = 0\n\nb = 2\n"  # printing never touches the file


def test_other_special_tokens_are_dropped_and_ignore_eos_prints_none(tmp_path, home, ckpt, scripted):
    path = write(tmp_path / "mod.py", b"a = 0\n\nb = 2\n")
    scripted("x = 1<jupyter_code> + 2<|endoftext|><fim_middle>")  # the last token repeats until the limit
    run = sc2([str(path), "--line", "2", "-m", str(ckpt), "--max-new-tokens", "12", "--ignore-eos", "--json"])
    assert run.code == 0, run.err
    result = json.loads(run.out)
    assert result["middle"] == "x = 1 + 2" and result["finish_reason"] == "length"
    assert "<" not in run.stdout


def test_line_mode_through_the_cli_trims_the_closing_bracket(tmp_path, home, ckpt, scripted):
    path = write(tmp_path / "mod.py", b"y = foo()\nz = 1\n")
    scripted("a, b)\nprint(y)\n<file_sep>")
    run = sc2([str(path), "--line", "1", "--column", "9", "-m", str(ckpt), "--json"])
    assert run.code == 0, run.err
    result = json.loads(run.out)
    assert result["mode"] == "line" and result["middle"] == "a, b" and result["finish_reason"] == "stop"


# ---- 3. when the middle ends: MiddleFilter -----------------------------------------------------------------------


def run_filter(mode: str, prefix: str, suffix: str, generated: str, style: scope.IndentStyle | None = None,
               chunk: int | None = None) -> tuple[str, bool]:
    """Feed `generated` in pieces of `chunk` characters (all at once when None); (middle, stopped by the filter)."""
    style = style or scope.IndentStyle.detect(prefix + suffix)
    middle = scope.MiddleFilter(mode, prefix, suffix, style)
    pieces = [generated] if chunk is None else [generated[i:i + chunk] for i in range(0, len(generated), chunk)]
    out = ""
    for piece in pieces:
        text, stopped = middle.feed(piece)
        out += text
        if stopped:
            return out, True
    return out + middle.flush(), False


FILTER_CASES = {
    # line mode
    "line: ends at the first newline after code": (
        "line", "x = ", "\nprint(x)\n", "compute()\nmore()\n", "compute()", True),
    "line: leading blank lines are kept": ("line", "x = foo(", ")\n", "\n\na, b)\nnext\n", "\n\na, b", True),
    "line: the closing bracket right of the cursor is trimmed": ("line", "x = foo(", ")\n", "a, b)\n", "a, b", True),
    "line: right-of-cursor overlap trimmed at the end of the stream": ("line", "if x", ":\n    pass\n", " > 0:",
                                                                       " > 0", False),
    "line: no overlap, nothing trimmed": ("line", "x = foo(", ")\n", "a, b", "a, b", False),
    "line: the model's space before the overlap is kept": ("line", "r = compute(", "scale)\n", "data, scale)\n",
                                                          "data, ", True),
    "line: the suffix's own leading space is not doubled": ("line", "x =", " 1 + 2\n", " 1 + 2\n", "", True),
    "line: overlap written with other spacing": ("line", "f(a,", " b)\n", "c,b)\n", "c,", True),
    # block mode
    "block: ends before a dedented line": (
        "block", "def f():\n    if x:\n        ", "\n    return 1\n", "a = 1\n        b = 2\n    c = 3\n",
        "a = 1\n        b = 2", True),
    "block: after `def f():` the body ends at the opener's indent": (
        "block", "def f():", "\n\n\ndef g():\n    pass\n", "\n    a = 1\n\n    return a\n\nprint(f())\n",
        "\n    a = 1\n\n    return a", True),
    "block: unindented blank cursor line, the first code line sets the block": (
        "block", "def f():\n", "\ndef g():\n    pass\n", "    a = 1\n    return a\n\ndef h():\n",
        "    a = 1\n    return a", True),
    "block: trailing blank lines dropped, newline kept when the suffix has none": (
        "block", "def f():\n", "def g():\n    pass\n", "    return 1\n\n\ndef h():\n", "    return 1\n", True),
    "block: no trailing newline when the suffix starts with one": (
        "block", "def f():\n    ", "\n\ndef g():\n    pass\n", "a = 1\n    return a\n\ndef h():\n",
        "a = 1\n    return a", True),
    "block: end of stream after whole lines": ("block", "def f():\n    ", "\n    return x\n", "a = 1\n\n\n",
                                               "a = 1", False),
    "block: end of stream mid-line": ("block", "def f():\n    ", "\n    return x\n", "a = 1\n    b = g(",
                                      "a = 1\n    b = g(", False),
    # suffix overlap (both modes' block logic)
    "suffix: its first two non-blank lines reappear": (
        "block", "def f(x):\n    ", "\n    y = x + 1\n\n    return y\n", "x = abs(x)\n    y = x + 1\n    return y\n",
        "x = abs(x)", True),
    "suffix: one matching line followed by different code is kept": (
        "block", "def f(x):\n    ", "\n    y = x + 1\n    return y\n", "x = abs(x)\n    y = x + 1\n    z = y\n",
        "x = abs(x)\n    y = x + 1\n    z = y", False),
    "suffix: a one-line suffix reappearing": ("block", "def f(x):\n    ", "\n    return x\n",
                                              "x += 1\n    return x\n    junk\n", "x += 1", True),
    "suffix: the model only repeats the suffix": ("block", "def f():\n    ", "\n    return 1\n", "return 1\n", "",
                                                  True),
}


@pytest.mark.parametrize("case", list(FILTER_CASES), ids=list(FILTER_CASES))
@pytest.mark.parametrize("chunk", [None, 1, 3])
def test_middle_filter(case, chunk):
    mode, prefix, suffix, generated, expected, stopped = FILTER_CASES[case]
    assert run_filter(mode, prefix, suffix, generated, chunk=chunk) == (expected, stopped)


def test_indentation_follows_the_file_style():
    tabs_prefix, tabs_suffix = "def f():\n\tif x:\n\t\tpass\n\t", "\n\treturn 1\n"
    style = scope.IndentStyle.detect(tabs_prefix + tabs_suffix)
    assert style.tabs
    middle, _ = run_filter("block", tabs_prefix, tabs_suffix, "for i in y:\n        print(i)\n    z()\nw()\n")
    assert middle == "for i in y:\n\t\tprint(i)\n\tz()"
    spaces_prefix, spaces_suffix = "def f():\n  if x:\n    pass\n  ", "\n  return 1\n"
    style = scope.IndentStyle.detect(spaces_prefix + spaces_suffix)
    assert not style.tabs and style.width == 2
    middle, _ = run_filter("block", spaces_prefix, spaces_suffix, "for i in y:\n\t\tprint(i)\n")
    assert middle == "for i in y:\n    print(i)"
    assert scope.IndentStyle.detect("x = 1\n") == scope.IndentStyle(tabs=False, width=4)


@pytest.mark.parametrize("mode, suffix, chosen", [
    ("auto", "a, b)\n", "line"),
    ("auto", "\nreturn 1\n", "block"),
    ("auto", "   \n  x\n", "block"),
    ("auto", "", "block"),
    ("line", "\n", "line"),
    ("block", "x)\n", "block"),
])
def test_choose_mode(mode, suffix, chosen):
    assert scope.choose_mode(mode, suffix) == chosen


# ---- 4. the token budget -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_file() -> tuple[str, str]:
    lines = [f"value_{i} = compute({i}, scale=2)\n" for i in range(3000)]
    return "".join(lines[:1500]) + "value_x = ", "\n" + "".join(lines[1500:])


def test_budget_cuts_prefix_from_its_start_and_suffix_from_its_end(tok, long_file):
    prefix, suffix = long_file
    budget = 400
    prompt = prompting.build_prompt(tok, prefix, suffix, budget)
    assert len(prompt.ids) <= budget
    assert prompt.ids == fim_ids(tok, prompt.prefix, prompt.suffix)
    # The prefix keeps its end (the cursor's line included), cut at a line boundary.
    assert prefix.endswith(prompt.prefix) and prompt.prefix.endswith("value_x = ")
    assert prefix[len(prefix) - len(prompt.prefix) - 1] == "\n"
    # The suffix keeps its start, whole lines.
    assert suffix.startswith(prompt.suffix) and prompt.suffix.endswith("\n")
    prefix_tokens, suffix_tokens = len(tok.encode_text(prompt.prefix)), len(tok.encode_text(prompt.suffix))
    assert 2.0 <= prefix_tokens / suffix_tokens <= 4.5  # about 3:1
    longest_line = max(len(tok.encode_text(line)) for line in (prefix + suffix).splitlines(keepends=True))
    assert len(prompt.ids) > budget - 2 * longest_line  # the budget is used, not wasted
    cut = prompt.truncation
    assert cut.prefix_chars_cut == len(prefix) - len(prompt.prefix) > 0
    assert cut.suffix_chars_cut == len(suffix) - len(prompt.suffix) > 0
    assert cut.dropped_context == [] and cut.any
    assert f"cut {cut.prefix_chars_cut} characters from the start of the prefix" in cut.describe()
    assert f"cut {cut.suffix_chars_cut} characters from the end of the suffix" in cut.describe()
    assert cut.to_json() == {"dropped_context": [], "prefix_chars_cut": cut.prefix_chars_cut,
                             "suffix_chars_cut": cut.suffix_chars_cut}


def test_budget_gives_a_short_suffix_all_it_needs(tok, long_file):
    prefix, _ = long_file
    prompt = prompting.build_prompt(tok, prefix, "\nprint(1)\n", 300)
    assert len(prompt.ids) <= 300
    assert prompt.suffix == "\nprint(1)\n" and prompt.truncation.suffix_chars_cut == 0


def test_budget_with_one_huge_cursor_line_keeps_its_end(tok):
    prefix = "x = [" + ", ".join(str(i) for i in range(120)) + ", "
    prompt = prompting.build_prompt(tok, prefix, "]\n", 40)
    assert len(prompt.ids) <= 40
    assert prompt.prefix and prefix.endswith(prompt.prefix)


def test_budget_holds_with_a_path_head(tok):
    """With repo context the path is encoded together with the prefix ("path\\n" + prefix), so counting the two
    apart can be off by a token: the prompt must still fit."""
    rnd = random.Random(5)
    pieces = ["def", "x", "  ", "\n", "    ", "return", "(", ")", ":", "\u00e9", "\t", "12345", " ", "foo_bar"]
    fitted = 0
    for _ in range(150):
        prefix = "".join(rnd.choice(pieces) for _ in range(rnd.randint(20, 100)))
        suffix = "".join(rnd.choice(pieces) for _ in range(rnd.randint(20, 100)))
        budget = rnd.randint(12, 60)
        try:
            prompt = prompting.build_prompt(tok, prefix, suffix, budget, "a", (), "org/app")
        except InputError:
            continue
        fitted += 1
        assert len(prompt.ids) <= budget, (prefix, suffix, budget)
        assert prefix.endswith(prompt.prefix) and suffix.startswith(prompt.suffix)
        assert prompt.truncation.prefix_chars_cut == len(prefix) - len(prompt.prefix)
        assert prompt.truncation.suffix_chars_cut == len(suffix) - len(prompt.suffix)
    assert fitted > 100


def test_budget_too_small_is_a_usage_error(tok):
    with pytest.raises(InputError, match="too small"):
        prompting.build_prompt(tok, "a = 1\n" * 50, "b = 2\n" * 50, 3)


def test_context_files_are_dropped_first(tok, long_file):
    small, big = ContextFile("lib/a.py", "A = 1\n"), ContextFile("lib/b.py", "B = 2\n" * 200)
    prefix, suffix = "import lib\n", "\nprint(lib.A)\n"
    full = prompting.build_prompt(tok, prefix, suffix, BIG, "main.py", [small, big], "org/app")
    without_big = prompting.build_prompt(tok, prefix, suffix, BIG, "main.py", [small], "org/app")
    assert len(full.ids) > len(without_big.ids)
    prompt = prompting.build_prompt(tok, prefix, suffix, len(without_big.ids), "main.py", [small, big], "org/app")
    assert prompt.ids == without_big.ids and prompt.text == without_big.text
    assert prompt.truncation.dropped_context == ["lib/b.py"]
    assert prompt.truncation.prefix_chars_cut == prompt.truncation.suffix_chars_cut == 0
    assert "left out 1 context file(s): lib/b.py" in prompt.truncation.describe()
    # Only when no context is left are prefix and suffix cut.
    long_prefix, long_suffix = long_file
    prompt = prompting.build_prompt(tok, long_prefix, long_suffix, 300, "main.py", [small, big], "org/app")
    assert len(prompt.ids) <= 300
    assert prompt.truncation.dropped_context == ["lib/b.py", "lib/a.py"]
    assert prompt.truncation.prefix_chars_cut > 0 and prompt.truncation.suffix_chars_cut > 0
    assert prompt.text.startswith("<repo_name>org/app<file_sep><fim_prefix>main.py\n")


def test_cli_reports_truncation_in_json_and_on_stderr(tmp_path, home, ckpt, no_weights, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "ctx" / "a.py", b"A = 1\n")
    write(tmp_path / "ctx" / "b.py", b"B = 2\n" * 300)
    write(tmp_path / "main.py", b"import ctx\n\nprint(ctx.A)\n")
    # The tiny checkpoint has 512 positions and no window: 400 new tokens leave a 112-token prompt budget.
    run = sc2(["main.py", "--line", "2", "--context", "ctx", "--repo-name", "org/app", "-m", str(ckpt),
               "--max-new-tokens", "400", "--dry-run", "--json"])
    assert run.code == 0, run.err
    result = json.loads(run.out)
    assert result["prompt_tokens"] == len(result["ids"]) <= 112
    assert result["truncation"] == {"dropped_context": ["ctx/b.py"], "prefix_chars_cut": 0, "suffix_chars_cut": 0}
    assert result["prompt"] == ("<repo_name>org/app<file_sep>ctx/a.py\nA = 1\n<file_sep><fim_prefix>main.py\n"
                                "import ctx\n<fim_suffix>\nprint(ctx.A)\n<fim_middle>")
    warning = [line for line in run.err.splitlines() if line.startswith("warning:")]
    assert warning == ["warning: the prompt did not fit 112 tokens: left out 1 context file(s): ctx/b.py"]
    # A long file: prefix and suffix are cut, and said so.
    write(tmp_path / "long.py", "".join(f"v{i} = {i}\n" for i in range(3000)).encode())
    run = sc2(["long.py", "--line", "1500", "-m", str(ckpt), "--max-new-tokens", "400", "--dry-run", "--json"])
    assert run.code == 0, run.err
    result = json.loads(run.out)
    cut = result["truncation"]
    assert result["prompt_tokens"] <= 112 and cut["prefix_chars_cut"] > 0 and cut["suffix_chars_cut"] > 0
    prompt = result["prompt"]
    assert "\nv1499 = 1499<fim_suffix>\nv1500 = 1500\n" in prompt  # the lines around the cursor are kept
    assert prompt.startswith("<fim_prefix>v") and prompt.endswith("\n<fim_middle>")  # cut at line boundaries
    assert f"cut {cut['prefix_chars_cut']} characters from the start of the prefix" in run.err


# ---- 5. --diff applied by `patch` equals --write -----------------------------------------------------------------

DIFF_CASES = {
    "CRLF": (b"def f():\r\n    \r\n    return 1\r\n", ["--line", "2"], "x = 1\n    y = 2\n<file_sep>",
             b"def f():\r\n    x = 1\r\n    y = 2\r\n    return 1\r\n"),
    "no final newline (append)": (b"a = 1\nb = 2", ["--line", "3"], "c = 3<file_sep>", b"a = 1\nb = 2\nc = 3"),
    "no final newline (last line)": (b"a = 1\nb = foo(", ["--line", "2"], "1)<file_sep>", b"a = 1\nb = foo(1)"),
    "non-UTF-8 bytes": (b"# \xff\xfe caf\xe9\nx = 1\n\ny = 2\n", ["--line", "3"], "z = 3<file_sep>",
                        b"# \xff\xfe caf\xe9\nx = 1\nz = 3\ny = 2\n"),
    "form feed and lone CR": (b"a = 1\n\x0c\n\nb = '\r'\n", ["--line", "3"], "c = 3<file_sep>",
                              b"a = 1\n\x0c\nc = 3\nb = '\r'\n"),
    "--marker": (b"def f(x):\n    return <CURSOR>\n", ["--marker", "<CURSOR>"], "x * 2<file_sep>",
                 b"def f(x):\n    return x * 2\n"),
    "--column": (b"y = foo()\nz = 1\n", ["--line", "1", "--column", "9"], "a, b)\n<file_sep>",
                 b"y = foo(a, b)\nz = 1\n"),
}


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("patch") is None, reason="`patch` is not installed")
@pytest.mark.parametrize("case", list(DIFF_CASES), ids=list(DIFF_CASES))
def test_diff_applied_by_patch_equals_write(tmp_path, home, ckpt, scripted, monkeypatch, case):
    data, cursor_args, script, expected = DIFF_CASES[case]
    relative = Path("pkg") / "mod.py"
    patched, written = tmp_path / "patched", tmp_path / "written"
    for root in (patched, written):
        write(root / relative, data)
    scripted(script)

    monkeypatch.chdir(patched)
    run = sc2([str(relative), *cursor_args, "-m", str(ckpt), "--diff"])
    assert run.code == 0, run.err
    assert run.out.startswith(b"--- a/pkg/mod.py\n+++ b/pkg/mod.py\n")
    assert (patched / relative).read_bytes() == data  # --diff only prints
    applied = subprocess.run(["patch", "-p1", "--quiet"], input=run.out, cwd=patched, capture_output=True,
                             timeout=30)
    assert applied.returncode == 0, (applied.stdout, applied.stderr, run.out)

    monkeypatch.chdir(written)
    run = sc2([str(relative), *cursor_args, "-m", str(ckpt), "--write"])
    assert run.code == 0, run.err
    assert (written / relative).read_bytes() == expected
    assert (patched / relative).read_bytes() == expected
    assert sorted(p.name for p in (written / "pkg").iterdir()) == ["mod.py"]  # no temp file left


def test_unified_diff_splits_lines_at_lf_only():
    before = b"a\x0cb\nc\x1dd\ne\xe2\x80\xa8f\n"
    after = before + b"g\n"
    diff = fim_source.unified_diff(before, after, "/abs/x.py")
    assert diff.startswith(b"--- a/abs/x.py\n+++ b/abs/x.py\n@@ -1,3 +1,4 @@\n")
    assert diff.endswith(b" a\x0cb\n c\x1dd\n e\xe2\x80\xa8f\n+g\n")


# ---- 6. --write is atomic and fails fast -------------------------------------------------------------------------


def _boom(exc: BaseException):
    def raise_(*args, **kwargs):
        raise exc

    return raise_


@pytest.mark.parametrize("target, exc, code", [
    ("fsync", OSError(errno.ENOSPC, "No space left on device"), 1),
    ("replace", OSError(errno.ENOSPC, "No space left on device"), 1),
    ("chmod", OSError(errno.EPERM, "Operation not permitted"), 1),
    ("replace", KeyboardInterrupt(), 130),
    ("fsync", KeyboardInterrupt(), 130),
])
def test_failure_during_write_leaves_the_file_untouched(tmp_path, home, ckpt, scripted, monkeypatch, target, exc,
                                                        code):
    folder = tmp_path / "src"
    original = b"a = 0\r\n\r\nb = '\xff'\r\n"
    path = write(folder / "mod.py", original)
    scripted("x = 1<file_sep>")
    monkeypatch.setattr(files.os, target, _boom(exc))
    run = sc2([str(path), "--line", "2", "-m", str(ckpt), "-w"])
    monkeypatch.undo()
    if code == 1:
        run.one_line_error(1, "cannot write", "unchanged")
    else:
        assert run.code == code and len(run.err.splitlines()) <= 1, run.err
    assert path.read_bytes() == original
    assert [p.name for p in folder.iterdir()] == ["mod.py"]  # no temp file behind


def test_write_keeps_permissions(tmp_path, home, ckpt, scripted):
    path = write(tmp_path / "mod.py", b"a = 0\n\nb = 2\n")
    path.chmod(0o640)
    scripted("x = 1<file_sep>")
    run = sc2([str(path), "--line", "2", "-m", str(ckpt), "-w"])
    assert run.code == 0, run.err
    assert path.read_bytes() == b"a = 0\nx = 1\nb = 2\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert f"into {path} at line 2" in run.err
    assert run.out == b""


def test_read_only_file_fails_before_the_model_runs(tmp_path, home, ckpt, scripted):
    path = write(tmp_path / "mod.py", b"a = 0\n\nb = 2\n")
    path.chmod(0o444)
    loads = scripted("x = 1<file_sep>")
    run = sc2([str(path), "--line", "2", "-m", str(ckpt), "-w"])
    run.one_line_error(1, "read-only", "unchanged")
    assert loads == []  # fail fast: no model
    assert path.read_bytes() == b"a = 0\n\nb = 2\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o444


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder")
def test_read_only_folder_fails_before_the_model_runs(tmp_path, home, ckpt, scripted):
    folder = tmp_path / "ro"
    path = write(folder / "mod.py", b"a = 0\n\nb = 2\n")
    folder.chmod(0o555)
    try:
        loads = scripted("x = 1<file_sep>")
        sc2([str(path), "--line", "2", "-m", str(ckpt), "-w"]).one_line_error(1, "folder is read-only")
        assert loads == []
    finally:
        folder.chmod(0o755)


# ---- 7. best-of-n ----------------------------------------------------------------------------------------------


def _completion(row: int, text: str, logprob: float, tokens: int = 4) -> Completion:
    return Completion(row=row, text=text, tokens=list(range(tokens)), logprob=logprob, finish_reason="stop")


def test_rank_candidates_puts_parsing_ones_first():
    source = fim_source.SourceText.from_bytes(b"def f(x):\n    return \n")
    cursor = fim_source.cursor_at(source, 2)
    completions = [
        _completion(0, "x +", -0.4),  # best score, does not parse
        _completion(1, "x * 2", -3.2),  # parses, worst score (mean -0.8)
        _completion(2, "(x", -1.0),  # does not parse
        _completion(3, "x - 1", -1.2, tokens=2),  # parses, mean -0.6
    ]
    ranked = rank_candidates(source, cursor, completions, python=True)
    assert [(c.index, c.parses) for c in ranked] == [(3, True), (1, True), (0, False), (2, False)]
    assert ranked[0].middle == "x - 1" and ranked[0].filled == b"def f(x):\n    return x - 1\n"
    assert ranked[0].mean_logprob == pytest.approx(-0.6)
    assert ranked[0].to_json() == {"index": 3, "text": "x - 1", "mean_logprob": -0.6, "finish_reason": "stop",
                                   "parses": True}
    # Without the check (not Python, or --no-check): by mean log-probability only, `parses` is null.
    ranked = rank_candidates(source, cursor, completions, python=False)
    assert [c.index for c in ranked] == [0, 2, 3, 1]
    assert [c.mean_logprob for c in ranked] == pytest.approx([-0.1, -0.25, -0.6, -0.8])
    assert all(c.parses is None for c in ranked)


def test_parses_checks_the_whole_file():
    assert fim_source.parses(b"def f():\n    return 1\n")
    assert not fim_source.parses(b"def f(:\n")
    assert not fim_source.parses(b"x = '\xff'\n")  # not UTF-8: not valid Python source
    assert not fim_source.parses(b"x = 1\x00\n")


def test_best_of_n_json_on_a_real_checkpoint(tmp_path, home, ckpt):
    path = write(tmp_path / "mod.py", b"def f(x):\n    \n    return x\n")
    run = sc2([str(path), "--line", "2", "-m", str(ckpt), "--dtype", "float32", "--device", "cpu", "-n", "2",
               "--max-new-tokens", "6", "--seed", "7", "--json"])
    assert run.code == 0, run.err
    assert "sampling at --temperature 0.6" in run.err
    result = json.loads(run.out)
    assert set(result) == {"model", "middle", "finish_reason", "mode", "cursor", "prompt_tokens", "truncation",
                           "seed", "candidates"}
    assert result["model"] == str(ckpt) and result["mode"] == "block" and result["seed"] == 7
    assert result["cursor"] == {"line": 2, "column": 5, "append": False}
    prefix, suffix = "def f(x):\n    ", "\n    return x\n"
    assert result["prompt_tokens"] == len(fim_ids(Tokenizer.from_dir(ckpt), prefix, suffix))
    candidates = result["candidates"]
    assert len(candidates) == 2 and sorted(c["index"] for c in candidates) == [0, 1]
    for c in candidates:
        assert set(c) == {"index", "text", "mean_logprob", "finish_reason", "parses"}
        assert isinstance(c["parses"], bool) and isinstance(c["mean_logprob"], float) and c["mean_logprob"] <= 0
        assert c["finish_reason"] in ("stop", "length")
        filled = fim_source.filled_bytes(fim_source.SourceText.from_bytes(path.read_bytes()),
                                   fim_source.cursor_at(fim_source.SourceText.from_bytes(path.read_bytes()), 2), c["text"])
        assert c["parses"] == fim_source.parses(filled)
        assert not any(special in c["text"] for special in SPECIAL_TOKENS)
    keys = [(not c["parses"], -c["mean_logprob"]) for c in candidates]
    assert keys == sorted(keys)
    assert result["middle"] == candidates[0]["text"] and result["finish_reason"] == candidates[0]["finish_reason"]


# ---- 8. --dry-run, stdin, bad input -------------------------------------------------------------------------------


def test_dry_run_prints_the_exact_prompt_without_loading_weights(tmp_path, home, ckpt, no_weights):
    path = write(tmp_path / "mod.py", b"def f(x):\r\n    \r\n    return x\r\n")
    prefix, suffix = "def f(x):\n    ", "\n    return x\n"
    expected_ids = fim_ids(Tokenizer.from_dir(ckpt), prefix, suffix)
    run = sc2([str(path), "--line", "2", "-m", str(ckpt), "--dry-run"])
    assert run.code == 0, run.err
    assert run.stdout == fim_text(prefix, suffix)
    assert f"{len(expected_ids)} prompt tokens" in run.err
    run = sc2([str(path), "--line", "2", "-m", str(ckpt), "--dry-run", "--json"])
    assert run.code == 0, run.err
    result = json.loads(run.out)
    assert result["prompt"] == fim_text(prefix, suffix)
    assert result["prompt_tokens"] == len(result["ids"]) == len(expected_ids)
    assert result["ids"] == expected_ids
    assert result["cursor"] == {"line": 2, "column": 5, "append": False}
    assert result["truncation"] == {"dropped_context": [], "prefix_chars_cut": 0, "suffix_chars_cut": 0}
    assert path.read_bytes() == b"def f(x):\r\n    \r\n    return x\r\n"


def test_stdin_as_file(home, ckpt, no_weights):
    data = b"a = 1\n\nb = '\xff'\n"
    run = sc2(["-", "--line", "2", "-m", str(ckpt), "--dry-run"], input=data)
    assert run.code == 0, run.err
    assert run.stdout == fim_text("a = 1\n", "\nb = '\ufffd'\n")
    sc2(["-", "--line", "2", "-m", str(ckpt), "-w"], input=data).one_line_error(2, "--write needs a file")


def test_stdin_diff_and_middle(home, ckpt, scripted):
    scripted("x = 2<file_sep>")
    run = sc2(["-", "--line", "2", "-m", str(ckpt)], input=b"a = 1\n\nb = 3\n")
    assert run.code == 0, run.err
    assert run.stdout == "x = 2"
    run = sc2(["-", "--line", "2", "-m", str(ckpt), "--diff"], input=b"a = 1\n\nb = 3\n")
    assert run.code == 0, run.err
    assert run.out == b"--- a/stdin\n+++ b/stdin\n@@ -1,3 +1,3 @@\n a = 1\n-\n+x = 2\n b = 3\n"


@pytest.mark.parametrize("kind, needle", [
    ("directory", "is a directory"),
    ("missing", "does not exist"),
    ("binary", "looks binary"),
    ("empty", "is empty"),
    ("blank", "is empty"),
])
def test_unusable_files_exit_2_with_one_line(tmp_path, home, ckpt, no_weights, kind, needle):
    path = tmp_path / "thing.py"
    if kind == "directory":
        path.mkdir()
    elif kind == "binary":
        path.write_bytes(b"\x7fELF\x00\x01\x02x = 1\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "blank":
        path.write_bytes(b"\n  \n")
    sc2([str(path), "--line", "1", "-m", str(ckpt)]).one_line_error(2, needle)


@pytest.mark.parametrize("args, needle", [
    ([], "--line N"),
    (["--line", "1", "--marker", "X"], "one of them"),
    (["--marker", "X", "--column", "2"], "--column needs --line"),
    (["--line", "1", "--mode", "word"], "--mode: the mode must be"),
    (["--line", "1", "--write", "--diff"], "choose one output"),
    (["--line", "1", "--write", "--json"], "choose one output"),
    (["--line", "1", "--diff", "--dry-run"], "choose one output"),
    (["--line", "1", "--write", "--dry-run", "--json"], "choose one output"),
    (["--line", "1", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["--line", "1", "--max-new-tokens", "509"], "leaves no room"),
])
def test_bad_options_exit_2_with_one_line(tmp_path, home, ckpt, no_weights, args, needle):
    path = write(tmp_path / "a.py", b"x = 1\n")
    sc2([str(path), *args, "-m", str(ckpt)]).one_line_error(2, needle)


# ---- 9. repository context -----------------------------------------------------------------------------------------


def test_repo_context_prompt_in_starcoder2_format(tmp_path, home, ckpt, no_weights, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "src" / "a.py", b"A = 1\n")
    write(tmp_path / "src" / "sub" / "b.py", b"def b():\r\n    return 2\r\n")
    write(tmp_path / "src" / ".hidden.py", b"SECRET = 1\n")
    write(tmp_path / "src" / "blob.bin", b"\x00\x01\x02")
    write(tmp_path / "src" / "main.py", b"from a import A\n\nprint(A)\n")
    write(tmp_path / "extra.py", b"E = 3\n")
    args = ["src/main.py", "--line", "2", "--context", "src", "--context", "extra.py", "--repo-name", "org/app",
            "-m", str(ckpt), "--dry-run"]
    run = sc2(args)
    assert run.code == 0, run.err
    # Farthest from src/main.py's folder first, so the nearest files stand right before it (by path within one
    # folder distance): extra.py and src/sub/b.py are one folder away, src/a.py none.
    expected = ("<repo_name>org/app"
                "<file_sep>extra.py\nE = 3\n"
                "<file_sep>src/sub/b.py\ndef b():\n    return 2\n"
                "<file_sep>src/a.py\nA = 1\n"
                "<file_sep><fim_prefix>src/main.py\nfrom a import A\n<fim_suffix>\nprint(A)\n<fim_middle>")
    assert run.stdout == expected  # FILE is not its own context; hidden and binary files are skipped
    run = sc2(args + ["--json"])
    tok = Tokenizer.from_dir(ckpt)
    sep = tok.token_id("<file_sep>")
    ids = [tok.token_id("<repo_name>")] + tok.encode_text("org/app")
    for body in ("extra.py\nE = 3\n", "src/sub/b.py\ndef b():\n    return 2\n", "src/a.py\nA = 1\n"):
        ids += [sep] + tok.encode_text(body)
    ids += [sep] + fim_ids(tok, "src/main.py\nfrom a import A\n", "\nprint(A)\n")
    assert json.loads(run.out)["ids"] == ids
    # FILE given as its own context is left out too.
    run = sc2(["src/main.py", "--line", "2", "--context", "src/main.py", "--repo-name", "r", "-m", str(ckpt),
               "--dry-run"])
    assert run.code == 0, run.err
    assert run.stdout == ("<repo_name>r<file_sep><fim_prefix>src/main.py\nfrom a import A\n<fim_suffix>\nprint(A)\n"
                          "<fim_middle>")


def test_repo_name_alone_and_context_alone(tok):
    prompt = prompting.build_prompt(tok, "x = ", "\n", BIG, "m.py", (), "org/app")
    assert prompt.text == "<repo_name>org/app<file_sep><fim_prefix>m.py\nx = <fim_suffix>\n<fim_middle>"
    prompt = prompting.build_prompt(tok, "x = ", "\n", BIG, "m.py", [ContextFile("c.py", "C = 1\n")])
    assert prompt.text == "<file_sep>c.py\nC = 1\n<file_sep><fim_prefix>m.py\nx = <fim_suffix>\n<fim_middle>"
    assert prompt.ids == ([tok.token_id("<file_sep>")] + tok.encode_text("c.py\nC = 1\n")
                          + [tok.token_id("<file_sep>")] + fim_ids(tok, "m.py\nx = ", "\n"))
    # No context and no repo name: the plain PSM prompt, without the path.
    assert prompting.build_prompt(tok, "x = ", "\n", BIG, "m.py").text == fim_text("x = ", "\n")


def test_missing_context_path_exits_2(tmp_path, home, ckpt, no_weights):
    path = write(tmp_path / "a.py", b"x = 1\n")
    sc2([str(path), "--line", "1", "--context", str(tmp_path / "nope"), "-m", str(ckpt)]).one_line_error(
        2, "does not exist")


# ---- the token budget beyond the window (layers issue, fix 2) --------------------------------------------------


class _Shape:
    """What the budget reads from a config: the shipped model's shape (2,048 context, 512 window)."""

    def __init__(self, context: int = 2048, window: int | None = 512) -> None:
        self.max_position_embeddings, self.sliding_window = context, window


def test_typing_at_the_cursor_keeps_the_start_of_a_cut_prompt(tok, long_file):
    """A server reuses the cached start of the last prompt: one more character typed at the cursor must change
    the prompt at the cursor, not at its start (the prefix is cut at stable lines)."""
    prefix, suffix = long_file
    budget = prompting.token_budget(_Shape(), 128)
    typed = "    total = sum(value * 2 for value in values) + offset\n" * 3
    prompts = [prompting.build_prompt(tok, prefix + typed[:n], suffix, budget).ids for n in range(len(typed))]
    marker = tok.token_id("<fim_suffix>")
    moved = 0  # keystrokes after which the prompt changed before the last few tokens of the prefix
    for before, after in zip(prompts, prompts[1:]):
        shared = next((i for i, (a, b) in enumerate(zip(before, after)) if a != b), min(len(before), len(after)))
        moved += shared < before.index(marker) - 4
    assert moved <= 1  # (one cut at the next stable line at most, in 168 keystrokes)


def test_budget_is_the_context_minus_the_new_tokens_not_the_window():
    assert prompting.token_budget(_Shape(), 128) == prompting.Budget(total=1920, suffix=382)
    assert prompting.token_budget(_Shape(window=None), 128) == prompting.Budget(total=1920, suffix=None)
    assert prompting.token_budget(_Shape(window=4096), 128) == prompting.Budget(total=1920, suffix=None)
    # A middle as long as the window still leaves the suffix an eighth of it.
    assert prompting.token_budget(_Shape(), 600).suffix == 64


def test_long_file_keeps_context_beyond_the_window_and_the_suffix_inside_it(tok, long_file):
    prefix, suffix = long_file
    budget = prompting.token_budget(_Shape(), 128)
    prompt = prompting.build_prompt(tok, prefix, suffix, budget)
    assert len(prompt.ids) <= budget.total
    # The context is used, not just the window: the prefix is cut at a stable line (a multiple of STABLE_LINES,
    # so that prompts reuse their cache while a user types), and the stable cut before it would not fit.
    dropped = prefix[: len(prefix) - len(prompt.prefix)].splitlines(keepends=True)
    assert len(dropped) % prompting.STABLE_LINES == 0
    assert len(prompt.ids) + len(tok.encode_text("".join(dropped[-prompting.STABLE_LINES:]))) > budget.total
    assert len(prompt.ids) > 512
    suffix_tokens = len(tok.encode_text(prompt.suffix))
    assert 0 < suffix_tokens <= budget.suffix  # the prefix's end stays in view of every generated token
    assert prefix.endswith(prompt.prefix) and suffix.startswith(prompt.suffix)
    assert prompt.suffix.endswith("\n") and prompt.prefix.startswith("value_")  # cut at whole lines
    assert prompt.truncation.suffix_chars_cut == len(suffix) - len(prompt.suffix) > 0


def test_suffix_over_the_window_is_cut_even_when_the_file_fits_the_context(tok):
    prefix, suffix = "x = 1\n" * 10, "".join(f"y_{i} = {i}\n" for i in range(400))
    budget = prompting.Budget(total=100_000, suffix=50)
    prompt = prompting.build_prompt(tok, prefix, suffix, budget)
    assert prompt.prefix == prefix  # nothing else is cut
    assert len(tok.encode_text(prompt.suffix)) <= 50 and suffix.startswith(prompt.suffix) and prompt.suffix


def test_prompt_of_a_huge_file_costs_the_budget_not_the_file(tok, monkeypatch):
    """Cut by characters near the cursor first, then tokenize: the tokenizer never sees more than the budget can
    hold (a 5 MB file took 18 s and 706 MB to build a 482-token prompt, re-encoding the whole file per cut)."""
    line = "result = transform(value, scale=2, offset=3)  # a line of ordinary code\n"
    huge = line * (5_000_000 // len(line))
    encoded: list[int] = []
    real = tok.encode_text
    monkeypatch.setattr(tok, "encode_text", lambda text: encoded.append(len(text)) or real(text))
    prompt = prompting.build_prompt(tok, huge, huge, prompting.Budget(total=400, suffix=100))
    assert len(prompt.ids) <= 400 and prompt.truncation.prefix_chars_cut > 4_000_000
    assert max(encoded) <= 400 * prompting.MAX_CHARS_PER_TOKEN
    assert sum(encoded) < 100 * 400 * prompting.MAX_CHARS_PER_TOKEN  # a binary search's worth, not a file's


@pytest.mark.slow
def test_dry_run_of_a_huge_file_never_loads_torch(tmp_path, ckpt):
    """Building a prompt needs the config and the tokenizer, not the model: no torch, no weights."""
    path = write(tmp_path / "huge.py", b"value = compute(1, scale=2)\n" * 200_000)
    code = ("import sys; from sc2cli.cli import main\n"
            f"try: main(['infill', {str(path)!r}, '--line', '150000', '--dry-run', '-m', {str(ckpt)!r}])\n"
            "except SystemExit as e: assert e.code in (0, None), e.code\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120, env=isolated_env(tmp_path))
    assert out.returncode == 0, out.stderr.decode()
    assert b"<fim_prefix>" in out.stdout and b"did not fit" in out.stderr


def test_each_context_file_that_fits_is_kept(tok):
    """A big far file no longer takes the small near ones down with it."""
    big = ContextFile("lib/a_big.py", "value = compute(1, scale=2)\n" * 400)
    small = ContextFile("lib/z_small.py", "def helper():\n    return 1\n")
    prompt = prompting.build_prompt(tok, "x = ", "\n", 200, "main.py", [small, big][::-1], "org/app")
    assert prompt.truncation.dropped_context == ["lib/a_big.py"]
    assert "lib/z_small.py" in prompt.text and len(prompt.ids) <= 200


# ---- one pipeline for every caller (layers issue) -------------------------------------------------------------


def _scripted_backend(ckpt, text: str):
    from sc2cli.backends.local import LocalBackend

    config, tokenizer = load_config(ckpt), Tokenizer.from_dir(ckpt)
    loaded = Loaded(model=ScriptedModel(config, tokenizer.encode(text)), tokenizer=tokenizer, path=ckpt,
                    name="scripted", load_seconds=0.0)
    return LocalBackend(loaded)


def test_fill_from_an_editors_prefix_and_suffix_without_a_file(ckpt):
    from sc2cli.fim.pipeline import InfillRequest, fill

    backend = _scripted_backend(ckpt, "return a + b\n\ndef other():<|endoftext|>")
    request = InfillRequest.from_text("def add(a, b):\n    ", "\n\nprint(add(1, 2))\n", path="calc.py")
    seen: list[str] = []
    result = fill(request, backend, on_text=seen.append)
    assert result.text == "return a + b" == "".join(seen)  # block mode ends before `def other():`
    assert result.best.filled == b"def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n"
    assert result.best.parses is True and result.source_parses is False  # (an empty body does not parse)
    assert result.plan.mode == "block" and result.plan.prompt.ids[-1] == backend.tokenizer.token_id("<fim_middle>")


def test_pipeline_errors_name_the_field_not_a_flag(ckpt):
    from sc2cli.fim.pipeline import InfillRequest, plan

    config, tokenizer = load_config(ckpt), Tokenizer.from_dir(ckpt)
    with pytest.raises(InputError) as raised:
        plan(InfillRequest.from_text("a", "b", mode="word"), tokenizer, config)
    assert raised.value.field == "mode" and "--" not in str(raised.value)
    with pytest.raises(InputError) as raised:
        InfillRequest.from_file(b"x = 1\n", line=5)
    assert raised.value.field == "line" and "--" not in str(raised.value)


# ---- --write keeps a parsing file parsing (layers issue, fix 3) ------------------------------------------------


def test_write_refuses_a_middle_that_breaks_a_parsing_file(tmp_path, home, ckpt, scripted):
    data = b"def f(x):\n    return x\n\nprint(f(1))\n"
    path = write(tmp_path / "m.py", data)
    scripted("(((<|endoftext|>")
    run = sc2([str(path), "--line", "2", "-m", str(ckpt), "-w"])
    err = run.one_line_error(1, "unchanged", "--force")
    assert "(((" in err and path.read_bytes() == data  # the best middle is shown; the file is untouched
    run = sc2([str(path), "--line", "2", "-m", str(ckpt), "--diff"])
    assert run.code == 0 and b"+    return x(((" in run.out and "no candidate keeps the file parsing" in run.err
    run = sc2([str(path), "--line", "2", "-m", str(ckpt)])
    assert run.code == 0 and run.out == b"(((" and "warning" in run.err
    run = sc2([str(path), "--line", "2", "-m", str(ckpt), "-w", "--force"])
    assert run.code == 0, run.err
    assert path.read_bytes() == b"def f(x):\n    return x(((\n\nprint(f(1))\n"


def test_write_of_a_file_that_never_parsed_is_not_refused(tmp_path, home, ckpt, scripted):
    path = write(tmp_path / "broken.py", b"def f(:\n    x = \n")
    scripted("1<|endoftext|>")
    run = sc2([str(path), "--line", "2", "-m", str(ckpt), "-w"])
    assert run.code == 0, run.err
    assert path.read_bytes() == b"def f(:\n    x = 1\n"


# ---- defects found by a new user (issue: twenty defects) --------------------------------------------------------


def test_block_mode_at_the_token_limit_writes_nothing_past_the_block(tmp_path, home, ckpt, scripted):
    """The generation ends (token limit) inside `def main():`, a line that has left the block: not written."""
    data = b"def f(x):\n    y = x * 2\n\n\nprint(f(2))\n"
    path = write(tmp_path / "c2.py", data)
    scripted("    return y\n\ndef main():\n    f(3)\n")
    run = sc2([str(path), "--line", "3", "-m", str(ckpt), "--max-new-tokens", "6", "-w"])
    assert run.code == 0, run.err
    assert path.read_bytes() == b"def f(x):\n    y = x * 2\n    return y\n\nprint(f(2))\n"  # line 3 filled


@pytest.mark.parametrize("cursor_line, script", [
    ("", "        y = x + 1\n        z = y * 2\n"),  # a blank line at column 1: the model writes the indentation
    ("\t\t", "y = x + 1\n        z = y * 2\n"),  # the line's tabs already there: the next line in spaces
    ("\t", "    y = x + 1\n        z = y * 2\n"),  # one tab left of the cursor, the rest in spaces
])
def test_tab_indented_files_get_tabs_on_every_inserted_line(tmp_path, home, ckpt, scripted, cursor_line, script):
    data = f"class A:\n\tdef m(self, x):\n{cursor_line}\n\t\treturn z\n".encode()
    path = write(tmp_path / "tabs.py", data)
    scripted(script)
    run = sc2([str(path), "--line", "3", "-m", str(ckpt), "-w"])
    assert run.code == 0, run.err
    assert path.read_bytes() == b"class A:\n\tdef m(self, x):\n\t\ty = x + 1\n\t\tz = y * 2\n\t\treturn z\n"


def test_write_through_a_symbolic_link_keeps_the_link(tmp_path, home, ckpt, scripted):
    target = write(tmp_path / "real" / "m.py", b"def f(x):\n    return \n")
    link = tmp_path / "link.py"
    link.symlink_to(target)
    scripted("x<|endoftext|>")
    run = sc2([str(link), "--line", "2", "-m", str(ckpt), "-w"])
    assert run.code == 0, run.err
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert target.read_bytes() == b"def f(x):\n    return x\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["m.py"]  # no temporary file left beside it


def test_write_refuses_to_split_hard_links(tmp_path, home, ckpt, scripted):
    data = b"def f(x):\n    return \n"
    first = write(tmp_path / "a.py", data)
    second = tmp_path / "b.py"
    os.link(first, second)
    scripted("x<|endoftext|>")
    sc2([str(first), "--line", "2", "-m", str(ckpt), "-w"]).one_line_error(1, "2 hard links", "unchanged")
    assert first.read_bytes() == second.read_bytes() == data and os.stat(first).st_ino == os.stat(second).st_ino
    with pytest.raises(files.Sc2Error, match="hard links"):
        files.atomic_write_bytes(second, b"x")  # the library refuses too
    assert second.read_bytes() == data


def test_tokens_and_logprob_describe_exactly_the_middle(ckpt):
    """Tokens whose text the block filter cut (`def g():` after the body) are not the middle's."""
    from sc2cli.fim.pipeline import InfillRequest, fill

    backend = _scripted_backend(ckpt, "return x\n\ndef g():\n    pass\n<|endoftext|>")
    result = fill(InfillRequest.from_text("def f(x):\n    ", "\n", path="m.py"), backend)
    best = result.best
    assert best.middle == "return x" == backend.tokenizer.decode(best.tokens)
    completion = result.run.completions[0]
    assert completion.tokens == best.tokens and completion.finish_reason == "stop"
    assert best.mean_logprob == pytest.approx(completion.logprob / len(best.tokens))


def test_diff_paths_are_relative_to_the_current_folder(tmp_path, home, ckpt, scripted, monkeypatch):
    data = b"def f(x):\n    return \n"
    path = write(tmp_path / "work" / "pkg" / "m.py", data)
    scripted("x<|endoftext|>")
    monkeypatch.chdir(tmp_path / "work")
    for typed in (str(path), "pkg/../pkg/m.py", "./pkg/m.py"):  # absolute, with .., with ./
        run = sc2([typed, "--line", "2", "-m", str(ckpt), "--diff"])
        assert run.code == 0, run.err
        assert run.out.startswith(b"--- a/pkg/m.py\n+++ b/pkg/m.py\n"), (typed, run.out)
    applied = subprocess.run(["patch", "-p1", "--quiet"], input=run.out, cwd=tmp_path / "work", capture_output=True,
                             timeout=30)
    assert applied.returncode == 0 and path.read_bytes() == b"def f(x):\n    return x\n"
    monkeypatch.chdir(tmp_path / "work" / "pkg")
    outside = write(tmp_path / "elsewhere" / "o.py", data)
    run = sc2([str(outside), "--line", "2", "-m", str(ckpt), "--diff"])
    assert run.code == 0 and "outside the current folder" in run.err
    assert run.out.startswith(f"--- a{outside}\n".encode())  # from / : `patch -p1 -d /` applies it


@pytest.mark.parametrize("args", [["--line", "1", "--column", "1"], ["--marker", "<C>"]])
def test_byte_order_mark_stays_first_and_is_no_column(tmp_path, home, ckpt, scripted, args):
    bom = b"\xef\xbb\xbf"
    data = bom + (b"<C>" if "--marker" in args else b"") + b"x = 1\n"
    path = write(tmp_path / "bom.py", data)
    scripted("import os\n<|endoftext|>")
    run = sc2([str(path), *args, "-m", str(ckpt), "-w", "--mode", "block"])
    assert run.code == 0, run.err
    assert path.read_bytes() == bom + b"import os\nx = 1\n"
    source = fim_source.SourceText.from_bytes(bom + b"x = 1\n")
    cursor = fim_source.cursor_at(source, 1, 1)
    assert cursor.column == 1 and fim_source.split_at(source, cursor) == ("", "x = 1\n")  # the model sees no BOM
    with pytest.raises(InputError, match="column 7 is outside line 1"):
        fim_source.cursor_at(source, 1, 7)  # "x = 1" has 5 characters: 1..6


@pytest.mark.parametrize("generated", [
    "    import sys\ndef main():\n",  # ends after rewriting the suffix's first line
    "    import sys\ndef main():\n    for li",  # ends inside its second line
    "    import sys\ndef main():\n    other()\n    x = 1\n",  # goes on differently: `def main():` left the block
])
def test_block_mode_never_keeps_a_line_that_left_the_block_while_it_looked_like_the_suffix(generated):
    """The suffix-overlap check holds lines that repeat the suffix's start; held or not, a line that has left the
    block (`def main():` after a body) is never part of the middle, however the generation ends."""
    middle = scope.MiddleFilter("block", "def r():\n    return 1\n\n", "\ndef main():\n    for line in x:\n",
                                scope.IndentStyle(False, 4))
    out, _ = middle.feed(generated)
    assert out + middle.flush() == "    import sys"


def test_an_empty_middle_is_announced(tmp_path, home, ckpt, scripted):
    data = b"def f(x):\n    return x\n"
    path = write(tmp_path / "m.py", data)
    scripted("<|endoftext|>")
    for output_args in ([], ["--diff"], ["-w"]):
        run = sc2([str(path), "--line", "2", "-m", str(ckpt), *output_args])
        assert run.code == 0 and run.out == b"" and "nothing to insert" in run.err, output_args
    assert path.read_bytes() == data
