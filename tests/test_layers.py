"""The layers issue: the core speaks of problems (not flags), a checkpoint is read once per call, the library API,
and the pipelines called the way a server will call them."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
from checkpoints import make_checkpoint
from cli_helpers import isolated_env
from typer.testing import CliRunner

import sc2cli
from sc2cli.cli import app

PACKAGE = Path(sc2cli.__file__).parent
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]+")


def _raised_messages(path: Path):
    """The string literals inside each `raise` statement of a module."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            for inner in ast.walk(node.exc):
                if isinstance(inner, ast.Constant) and isinstance(inner.value, str):
                    yield node.lineno, inner.value


def test_core_errors_name_no_flags():
    """Only the commands (and the benchmarks' own command-line entry) word errors as flags."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith(("cli/", "bench/")):
            continue
        offenders += [f"{relative}:{line}: {text!r}" for line, text in _raised_messages(path) if FLAG.search(text)]
    assert not offenders, offenders


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("layers-ckpt"), sliding_window=None, seed=5)


def test_one_infill_call_reads_the_checkpoint_once(ckpt, tmp_path, monkeypatch):
    """Resolved once, config.json parsed once, tokenizer.json parsed once (was 2, 3 and 2)."""
    from sc2cli import hub
    from sc2cli.model.config import Starcoder2Config
    from sc2cli.tokenizer import Tokenizer

    for key, value in isolated_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    counts = {"resolve": 0, "config": 0, "tokenizer": 0}

    def counting(name, function):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(hub, "resolve", counting("resolve", hub.resolve))
    monkeypatch.setattr(Starcoder2Config, "from_pretrained",
                        classmethod(counting("config", Starcoder2Config.from_pretrained.__func__)))
    monkeypatch.setattr(Tokenizer, "from_file", classmethod(counting("tokenizer", Tokenizer.from_file.__func__)))
    source = tmp_path / "m.py"
    source.write_text("def f(x):\n    return x\n")
    result = CliRunner().invoke(app, ["infill", str(source), "--line", "2", "-m", str(ckpt), "--dtype", "float32",
                                      "--max-new-tokens", "3", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert counts == {"resolve": 1, "config": 1, "tokenizer": 1}


def test_library_api_gives_what_the_commands_print(ckpt, tmp_path, monkeypatch):
    for key, value in isolated_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    model = sc2cli.load(str(ckpt), device="cpu", dtype="float32")
    runner = CliRunner()
    completed = sc2cli.complete("def fib(n):", model=model, max_new_tokens=8)
    printed = runner.invoke(app, ["complete", "-m", str(ckpt), "--dtype", "float32", "--max-new-tokens", "8",
                                  "def fib(n):"], catch_exceptions=False).stdout
    assert completed.text == printed and completed.completions[0].finish_reason in ("stop", "length")
    source = tmp_path / "m.py"
    source.write_text("def f(x):\n    y = \n    return y\n")
    streamed: list[str] = []
    filled = sc2cli.infill("def f(x):\n    y = ", "\n    return y\n", model=model, path="m.py", max_new_tokens=6,
                           on_text=streamed.append)
    printed = runner.invoke(app, ["infill", str(source), "--line", "2", "-m", str(ckpt), "--dtype", "float32",
                                  "--max-new-tokens", "6"], catch_exceptions=False).stdout
    assert filled.text == printed == "".join(streamed)
    assert filled.best.filled == source.read_bytes().replace(b"y = \n", b"y = " + printed.encode() + b"\n", 1)


def test_complete_pipeline_reports_a_cut_prompt_instead_of_printing(ckpt):
    from sc2cli.checkpoint import open_checkpoint
    from sc2cli.completion import CompletionRequest, plan
    from sc2cli.errors import InputError

    checkpoint = open_checkpoint(str(ckpt))
    long_prompt = "x = 1\n" * 400
    planned = plan(CompletionRequest(long_prompt), checkpoint.tokenizer, checkpoint.config)
    context = checkpoint.config.max_position_embeddings
    assert planned.tokens_cut > 0 and len(planned.ids) == context - 128
    with pytest.raises(InputError) as refused:
        plan(CompletionRequest(long_prompt, truncate=False), checkpoint.tokenizer, checkpoint.config)
    assert refused.value.field == "truncate" and "--" not in str(refused.value)


@pytest.mark.slow
def test_importing_the_package_and_its_api_names_never_imports_torch():
    code = ("import sys, sc2cli; names = sorted(sc2cli.__all__); "
            "assert 'torch' not in sys.modules, 'torch imported'; print(names)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(sorted(["Starcoder2Config", "Starcoder2ForCausalLM", "Starcoder2Model",
                                             "Starcoder2ForSequenceClassification",
                                             "Starcoder2ForTokenClassification", "complete", "infill", "load"]))
