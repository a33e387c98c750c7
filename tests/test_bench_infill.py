"""The infill benchmark: task construction per completion-tools.md §4b, scoring, and the command end to end."""

from __future__ import annotations

import json

import pytest
from checkpoints import make_checkpoint
from typer.testing import CliRunner

from sc2cli.bench import infill as bench
from sc2cli.cli import app
from sc2cli.train.data import SourceFile

CODE = '''import os


def load(path, mode="r"):
    # a comment line that must disappear
    with open(path, mode) as handle:
        data = handle.read()
    text = """a docstring line
    spanning several lines
    """
    if not data:
        return None
    else:
        return data.strip()


class Store:
    def __init__(self, root):
        self.root = os.path.abspath(root)
        self.items = {}

    def put(self, key, value):
        self.items[key] = value
        return len(self.items)
'''


def test_tasks_follow_the_recipe():
    tasks = bench.make_tasks([SourceFile("m.py", CODE * 3)], per_file=50, seed=0)
    assert tasks and len({t.line for t in tasks}) == len(tasks)
    for t in tasks:
        stripped = t.target.strip()
        assert 4 <= len(stripped) <= 120
        assert not stripped.startswith("#")
        assert stripped not in ("else:", "pass", "return", ")", "]", "}")
        assert "spanning several" not in stripped  # inside a multi-line string
        assert t.prefix.endswith("\n") or t.prefix == ""
        # CLI-native split: the file without comments is exactly prefix + target + newline + suffix
        assert t.prefix + t.target + "\n" + t.suffix == bench.drop_comment_lines(CODE * 3)


def test_at_most_per_file_and_seeded():
    files = [SourceFile(f"m{i}.py", CODE * 3) for i in range(5)]
    a = bench.make_tasks(files, per_file=3, seed=1)
    b = bench.make_tasks(files, per_file=3, seed=1)
    c = bench.make_tasks(files, per_file=3, seed=2)
    assert a == b and a != c
    assert all(sum(t.path == f.path for t in a) <= 3 for f in files)


def test_files_that_do_not_parse_or_are_tiny_are_skipped():
    assert bench.make_tasks([SourceFile("bad.py", "def (:\n" * 300)]) == []
    assert bench.make_tasks([SourceFile("tiny.py", "x = 1\n")]) == []


def test_scoring():
    task = bench.Task("m.py", 3, "def f():\n", "\nprint(1)\n", "    return 1")
    exact = bench.Result(task, "    return 1\n", "    return 1", "stop")
    first_only = bench.Result(task, "    return 1\n    return 2", "    return 1", "length")
    wrong = bench.Result(task, "    return 2", "    return 2", "stop")
    assert exact.exact and exact.first_line_exact
    assert not first_only.exact and first_only.first_line_exact
    assert not wrong.exact and 0.8 < wrong.similarity < 1.0
    summary = bench.summarize([exact, first_only, wrong])
    assert summary["exact_match"] == pytest.approx(1 / 3)
    assert summary["first_line_exact_match"] == pytest.approx(2 / 3)
    assert summary["stop_reasons"] == {"stop": 2, "length": 1}
    lo, hi = summary["first_line_exact_match_ci95"]
    assert 0.0 <= lo <= 2 / 3 <= hi <= 1.0


def test_first_line_uses_the_infill_line_filter():
    assert bench.first_line("\n    x = 1\n    y = 2", "def f():", "\n") == "\n    x = 1"
    assert bench.edit_similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)


def test_command_end_to_end(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        (data / f"mod{i}.py").write_text(CODE * 3)
    checkpoint = make_checkpoint(tmp_path / "ckpt", sliding_window=None, max_position_embeddings=1024)
    result = CliRunner().invoke(app, ["bench", "infill", "--data", str(data), "-m", str(checkpoint), "--limit", "5",
                                      "--max-new-tokens", "6", "--json"], catch_exceptions=False)
    assert result.exit_code == 0
    summary = json.loads(result.stdout)
    assert summary["tasks"] == 5 and len(summary["items"]) == 5
    assert sum(summary["stop_reasons"].values()) == 5
    assert {"exact_match", "first_line_exact_match", "edit_similarity", "exact_match_ci95"} <= set(summary)


def test_tasks_and_report_come_from_the_core(tmp_path):
    """What `sc2 bench infill` / `lookup` / `int8` draw their tasks from, and the report the JSON prints."""
    from sc2cli.bench import decode
    from sc2cli.errors import InputError

    data = tmp_path / "data"
    data.mkdir()
    (data / "m.py").write_text(CODE * 3)
    tasks, source = bench.infill_tasks(str(data), per_file=2, seed=0, limit=5)
    assert source == str(data) and len(tasks) == 2 and all(t.path == "m.py" for t in tasks)
    int8_tasks, _ = decode.int8_tasks(str(data), limit=1)
    assert len(int8_tasks) == 1
    lookup_tasks, _ = decode.lookup_tasks(str(data), limit=3)
    assert len(lookup_tasks) == 1  # one per file: the second copy of the code repeats the first
    (data / "m.py").write_text("x = 1\n")
    for call in (lambda: bench.infill_tasks(str(data)), lambda: decode.int8_tasks(str(data)),
                 lambda: decode.lookup_tasks(str(data))):
        with pytest.raises(InputError, match=str(data)) as refused:
            call()
        assert refused.value.exit_code == 2 and "--" not in str(refused.value)

    results = [bench.Result(tasks[0], tasks[0].target + "\n", tasks[0].target, "stop"),
               bench.Result(tasks[1], "nope", "nope", "length")]
    report = bench.report(results, model="m", data="d", seed=3, max_new_tokens=6)
    assert report == {**bench.summarize(results), "model": "m", "data": "d", "seed": 3, "max_new_tokens": 6}
    items = bench.report(results, model="m", data="d", seed=3, max_new_tokens=6, items=True)["items"]
    assert [i["exact"] for i in items] == [True, False] and items[1]["finish_reason"] == "length"
    assert set(items[0]) == {"path", "line", "target", "generated", "first_line", "exact", "first_line_exact",
                             "finish_reason"}

    lookup = decode.LookupResult(tasks=2, tokens=10, plain_s=2.0, lookup_s=1.0, identical=2)
    assert lookup.report("m", "d") == {
        "model": "m", "data": "d", "tasks": 2, "tokens": 10, "decode_s_without": 2.0, "decode_s_with": 1.0,
        "speedup": 2.0, "identical_outputs": 2, "tokens_per_s_without": 5.0, "tokens_per_s_with": 10.0}
    agreement = decode.AgreementResult(tasks=1, positions=4, agreeing=3, same_output=0)
    assert agreement.report("m", "d") == {"model": "m", "data": "d", "tasks": 1, "positions": 4,
                                          "agreement": 0.75, "same_output": 0}
