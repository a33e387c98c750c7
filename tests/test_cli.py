"""`sc2 complete`, `sc2 config` and the behaviour every command shares, through the real entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from checkpoints import make_checkpoint
from cli_helpers import assert_one_line_error, isolated_env, run_sc2, sc2_command
from typer.testing import CliRunner

import sc2cli
from sc2cli.cli import app
from sc2cli.cli.completions import SHELLS, script
from sc2cli.generation.engine import StopConditions, generate
from sc2cli.checkpoint import load


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"), seed=4)


@pytest.fixture
def home(tmp_path, monkeypatch):
    for key, value in isolated_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    return tmp_path


def invoke(args, input=None):
    result = CliRunner().invoke(app, args, input=input, catch_exceptions=False)
    return result


def _greedy_text(checkpoint, prompt: str, n: int) -> tuple[str, list[int]]:
    """What `sc2 complete` should print, from the library: trailing whitespace healed, and the default scope
    (`--mode auto`: a block after a line ending in ':')."""
    from sc2cli.completion import scope_filter
    from sc2cli.generation.healing import split_trailing_whitespace
    from sc2cli.tokenizer import boundary_token_ids

    loaded = load(str(checkpoint), device="cpu", dtype="float32")
    body, owed = split_trailing_whitespace(prompt)
    ids = loaded.tokenizer.encode(body)
    stop = StopConditions(token_ids=boundary_token_ids(loaded.tokenizer), max_new_tokens=n,
                          text_filter=scope_filter("auto", prompt))
    c = generate(loaded.model, loaded.tokenizer, [ids], stop=stop, heal=owed)[0]
    return c.text, c.tokens


def test_complete_argument_prints_the_greedy_completion(checkpoint, home):
    expected, _ = _greedy_text(checkpoint, "def fib(n):", 12)
    result = invoke(["complete", "-m", str(checkpoint), "--dtype", "float32", "--max-new-tokens", "12", "def fib(n):"])
    assert result.exit_code == 0
    assert result.stdout == expected


def test_complete_reads_stdin_when_piped_or_dash(checkpoint, home):
    expected, _ = _greedy_text(checkpoint, "x = 1\n", 6)
    for args in (["complete"], ["complete", "-"]):
        result = invoke(args + ["-m", str(checkpoint), "--dtype", "float32", "--max-new-tokens", "6"], input="x = 1\n")
        assert result.exit_code == 0, result.output
        assert result.stdout == expected


def test_complete_json_schema(checkpoint, home):
    result = invoke(["complete", "-m", str(checkpoint), "--dtype", "float32", "--max-new-tokens", "5", "-n", "2",
                     "--temperature", "0.9", "--seed", "5", "--json", "import os"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert set(data) == {"model", "choices", "usage", "timings", "seed"}
    assert data["seed"] == 5
    assert [c["index"] for c in data["choices"]] == [0, 1]
    for choice in data["choices"]:
        assert set(choice) == {"index", "text", "tokens", "finish_reason", "logprob"}
        assert choice["finish_reason"] in ("stop", "length")
        assert isinstance(choice["logprob"], float) and choice["logprob"] <= 0
        assert all(isinstance(t, int) for t in choice["tokens"])
    prompt_tokens = len(load(str(checkpoint), "cpu", "float32").tokenizer.encode("import os"))
    assert data["usage"]["prompt_tokens"] == prompt_tokens  # the samples share one prompt
    assert data["usage"]["completion_tokens"] == sum(len(c["tokens"]) for c in data["choices"])
    assert set(data["timings"]) == {"load_s", "time_to_first_token_s", "tokens_per_s"}
    again = invoke(["complete", "-m", str(checkpoint), "--dtype", "float32", "--max-new-tokens", "5", "-n", "2",
                    "--temperature", "0.9", "--seed", "5", "--json", "import os"])
    assert [c["tokens"] for c in json.loads(again.stdout)["choices"]] == [c["tokens"] for c in data["choices"]]


def test_sampling_options_and_ignore_eos(checkpoint, home):
    common = ["complete", "-m", str(checkpoint), "--dtype", "float32", "--json", "def f():"]
    base = json.loads(invoke(common + ["--max-new-tokens", "8", "--ignore-eos"]).stdout)["choices"][0]
    assert len(base["tokens"]) == 8 and base["finish_reason"] == "length"
    top1 = json.loads(invoke(common + ["--max-new-tokens", "8", "--ignore-eos", "--temperature", "1.3", "--top-k", "1",
                                       "--seed", "1"]).stdout)["choices"][0]
    assert top1["tokens"] == base["tokens"]
    for extra in (["--top-p", "0.5"], ["--min-p", "0.2"], ["--repetition-penalty", "1.3"]):
        out = invoke(common + ["--max-new-tokens", "8", "--temperature", "0.7", "--seed", "2"] + extra)
        assert out.exit_code == 0 and json.loads(out.stdout)["choices"][0]["tokens"]


def test_stop_string_cuts_the_output(checkpoint, home):
    full, _ = _greedy_text(checkpoint, "def f():", 30)
    assert len(full) > 6
    stop = full[3:6]
    result = invoke(["complete", "-m", str(checkpoint), "--dtype", "float32", "--max-new-tokens", "30", "--stop", stop,
                     "--json", "def f():"])
    choice = json.loads(result.stdout)["choices"][0]
    assert choice["text"] == full[: full.index(stop)]
    assert choice["finish_reason"] == "stop"


def test_no_stream_and_samples_in_text_mode(checkpoint, home):
    expected, _ = _greedy_text(checkpoint, "class A:", 7)
    result = invoke(["complete", "-m", str(checkpoint), "--dtype", "float32", "--max-new-tokens", "7", "--no-stream",
                     "class A:"])
    assert result.stdout == expected
    result = invoke(["complete", "-m", str(checkpoint), "--dtype", "float32", "--max-new-tokens", "7", "-n", "2",
                     "class A:"])
    assert result.stdout.count("--- sample") == 2


def test_model_from_environment_and_config_file(checkpoint, home, monkeypatch):
    expected, _ = _greedy_text(checkpoint, "y = ", 4)
    monkeypatch.setenv("SC2_MODEL", str(checkpoint))
    assert invoke(["complete", "--dtype", "float32", "--max-new-tokens", "4", "y = "]).stdout == expected
    monkeypatch.delenv("SC2_MODEL")
    assert invoke(["config", "set", "model", str(checkpoint)]).exit_code == 0
    shown = json.loads(invoke(["config", "--json"]).stdout)
    assert shown["model"]["value"] == str(checkpoint)
    assert shown["model"]["source"].endswith("config.toml")
    assert invoke(["complete", "--dtype", "float32", "--max-new-tokens", "4", "y = "]).stdout == expected
    assert invoke(["config", "unset", "model"]).exit_code == 0
    assert json.loads(invoke(["config", "--json"]).stdout)["model"]["source"] == "default"


@pytest.mark.slow
def test_prompt_longer_than_context_is_cut_or_refused(checkpoint, home):
    long_prompt = "x = 1\n" * 400  # far beyond the tiny model's 512 positions
    ok = run_sc2(["complete", "-m", str(checkpoint), "--max-new-tokens", "4", "--json", long_prompt], home)
    assert ok.returncode == 0, ok.stderr
    assert "cut from the left" in ok.stderr.decode()
    assert json.loads(ok.stdout)["usage"]["prompt_tokens"] <= 512
    refused = run_sc2(["complete", "-m", str(checkpoint), "--no-truncate", long_prompt], home)
    assert_one_line_error(refused, 2, "--no-truncate")


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, code, needle",
    [
        (["complete", "--bogus"], 2, "--bogus"),
        (["complete", "--temperature", "-1", "x"], 2, "temperature"),
        (["complete", "--top-p", "0", "x"], 2, "top-p"),
        (["complete", "--top-p", "1.5", "x"], 2, "top-p"),
        (["complete", "-n", "0", "x"], 2, "num-samples"),
        (["complete", "--max-new-tokens", "0", "x"], 2, "max-new-tokens"),
        (["complete", ""], 2, "empty"),
        (["complete", "-m", "/does/not/exist", "x"], 2, "/does/not/exist"),
        (["complete", "--dtype", "float64", "x"], 2, "dtype"),
        (["complete", "--device", "tpu", "x"], 2, "device"),
    ],
)
def test_bad_input_is_one_line_and_exit_code(args, code, needle, checkpoint, tmp_path):
    if "-m" not in args:
        args = args[:1] + ["-m", str(checkpoint)] + args[1:]
    assert_one_line_error(run_sc2(args, tmp_path), code, needle)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_cuda_is_a_usage_error(checkpoint, tmp_path):
    result = run_sc2(["complete", "-m", str(checkpoint), "--device", "cuda", "x"], tmp_path)
    assert_one_line_error(result, 2, "CUDA", "--device", "use cpu")


@pytest.mark.slow
def test_debug_env_shows_the_traceback(tmp_path):
    result = run_sc2(["complete", "-m", "/does/not/exist", "x"], tmp_path, SC2_DEBUG="1")
    assert result.returncode != 0
    assert "Traceback" in result.stderr.decode()


@pytest.mark.slow
def test_closed_pipe_ends_quietly(checkpoint, tmp_path):
    command = " ".join(sc2_command()) + f" complete -m {checkpoint} --ignore-eos --max-new-tokens 400 'def'"
    result = subprocess.run(["bash", "-c", f"{command} | head -c 3 >/dev/null; echo \"rc=${{PIPESTATUS[0]}}\" >&2"],
                            capture_output=True, env=isolated_env(tmp_path), timeout=300)
    stderr = result.stderr.decode()
    assert "rc=0" in stderr
    assert "Traceback" not in stderr and "error" not in stderr.lower()


@pytest.mark.slow
def test_stdout_carries_only_the_completion(checkpoint, tmp_path):
    expected, _ = _greedy_text(checkpoint, "import sys", 6)
    result = run_sc2(["complete", "-m", str(checkpoint), "--dtype", "float32", "--max-new-tokens", "6", "import sys"],
                     tmp_path)
    assert result.returncode == 0
    assert result.stdout.decode() == expected


@pytest.mark.slow
@pytest.mark.parametrize("args", [["--help"], ["config"], ["complete", "--help"]])
def test_light_commands_never_import_torch(args, tmp_path):
    code = ("import sys; from sc2cli.cli import main\n"
            "try:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n" % args)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, env=isolated_env(tmp_path), timeout=60)
    assert result.returncode == 0, result.stderr.decode()


@pytest.mark.slow
def test_shell_completion_never_imports_torch(tmp_path):
    code = ("import os, sys; from sc2cli.cli import main\n"
            "try:\n    main([])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules\n")
    env = isolated_env(tmp_path, _SC2_COMPLETE="complete_bash", COMP_WORDS="sc2 complete --ma", COMP_CWORD="2")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    assert "--max-new-tokens" in result.stdout.decode()


def test_committed_completion_scripts_are_up_to_date():
    from pathlib import Path

    directory = Path(__file__).parent.parent / "completions"
    for shell, filename in SHELLS.items():
        assert (directory / filename).read_text(encoding="utf-8") == script(shell), (
            f"completions/{filename} is stale: run `make completions`")


# ---- help at 80 columns, --stop escapes (layers issue fix 4; defects issue item 1) ------------------------------


def _description_widths(help_text: str) -> dict[str, int]:
    """Per help panel, the width of its description column, read from the rows that continue a wrapped description
    (a border, blanks up to the column, then text)."""
    widths: dict[str, int] = {}
    panel = None
    for line in help_text.splitlines():
        if line.startswith("╭─"):
            panel = line.strip("╭─╮ ").split(" ─")[0]
        elif line.startswith("│") and panel and line[1:].strip() and line[2] == " " and line.endswith("│"):
            body = line[1:-1]
            start = len(body) - len(body.lstrip(" "))
            widths[panel] = min(widths.get(panel, 999), len(body) - start)
    return widths


@pytest.mark.slow
@pytest.mark.parametrize("command, most_lines", [("complete", 60), ("infill", 80)])
def test_help_reads_at_80_columns(command, most_lines, home):
    result = run_sc2([command, "--help"], home, COLUMNS="80", timeout=60)
    text = result.stdout.decode()
    assert result.returncode == 0 and all(len(line) <= 80 for line in text.splitlines())
    assert all(f"─ {panel} ─" in text for panel in ("Model and device", "Sampling and stopping", "Output"))
    widths = _description_widths(text)  # (a panel whose descriptions all fit on their first line is not listed)
    assert widths and min(widths.values()) >= 40, widths  # every description column at least 40 characters wide
    assert len(text.splitlines()) <= most_lines


def test_first_spelling_of_the_lookup_flag_still_works(checkpoint, home):
    plain = invoke(["complete", "-m", str(checkpoint), "--dtype", "float32", "--max-new-tokens", "6", "x = 1"])
    for flag in ("--no-prompt-lookup", "--prompt-lookup", "--no-lookup", "--lookup"):
        result = invoke(["complete", "-m", str(checkpoint), "--dtype", "float32", "--max-new-tokens", "6", flag,
                         "x = 1"])
        assert result.exit_code == 0 and result.stdout == plain.stdout, flag


def test_stop_takes_the_usual_escapes(home):
    """The shell passes `--stop "\\n"` as backslash-n: it means a newline, as the README's example assumes (on the
    shipped model, which writes several lines after this prompt)."""
    base = ["complete", "--dtype", "float32", "--max-new-tokens", "40", "--mode", "free", "--no-stream"]
    free = invoke(base + ["for i in range("]).stdout
    assert "\n" in free.strip("\n")  # the model writes several lines here: the stop has something to cut
    stopped = invoke(base + ["--stop", "\\n", "for i in range("]).stdout
    assert stopped == free.split("\n", 1)[0] and "\n" not in stopped
    assert invoke(base + ["--stop", "\\\\n", "for i in range("]).stdout == free  # an escaped backslash is literal


@pytest.mark.slow
def test_greedy_samples_are_announced_as_identical(checkpoint, home):
    result = run_sc2(["complete", "-m", str(checkpoint), "--dtype", "float32", "--max-new-tokens", "3", "-n", "2",
                      "x"], home)
    assert result.returncode == 0 and "identical" in result.stderr.decode()


def test_block_mode_never_returns_code_past_the_block_at_the_token_limit():
    """However the generation ends, text that has left the block is not returned (`def f(` at the limit)."""
    from sc2cli.fim.scope import IndentStyle, MiddleFilter

    for cut in ("\n\ndef", "\n\ndef f", "\n\ndef f(", "\n\ndef f(x):"):
        middle = MiddleFilter("block", "def f(x):", "", IndentStyle(False, 4))
        out, stopped = middle.feed("\n    return x" + cut)
        assert not stopped
        assert out + middle.flush() == "\n    return x\n", cut


@pytest.mark.slow
def test_json_describes_exactly_the_returned_text(home):
    """The README's example ends at the block: `tokens`, `completion_tokens` and `logprob` are those of `text`,
    not of the code cut after it (47 tokens were reported for 36 of text)."""
    from sc2cli.tokenizer import Tokenizer

    result = run_sc2(["complete", "--dtype", "float32", "--json", "def fibonacci(n):"], home)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    choice = data["choices"][0]
    tokenizer = Tokenizer.from_dir(Path(sc2cli.__file__).parent / "shipped" / "sc2-tiny")
    # Exactly the text's tokens: all of it is theirs, and no token lies wholly past it (the last one may run past
    # the text when the block ended inside it; see test_engine's kept-token tests).
    text, tokens = choice["text"], choice["tokens"]
    assert tokenizer.decode(tokens).startswith(text) and len(tokenizer.decode(tokens[:-1])) < len(text)
    assert data["usage"]["completion_tokens"] == len(tokens)


@pytest.mark.slow
@pytest.mark.parametrize("seed", ["99999999999999999999999", "-1"])
def test_seed_out_of_range_is_a_usage_error(seed, checkpoint, tmp_path):
    result = run_sc2(["complete", "-m", str(checkpoint), "--seed", seed, "--temperature", "0.5", "x"], tmp_path)
    assert_one_line_error(result, 2, "--seed", "18446744073709551615")


def test_make_run_passes_the_prompt_through_the_environment():
    """`make run PROMPT='s = "it's"'` keeps quotes and apostrophes: the recipe never pastes PROMPT into a shell line."""
    makefile = (Path(sc2cli.__file__).parent.parent / "Makefile").read_text()
    recipe = makefile.split("\nrun:", 1)[1].split("\n\n", 1)[0]
    assert "export PROMPT" in makefile and '"$$PROMPT"' in recipe and "$(PROMPT)" not in recipe
