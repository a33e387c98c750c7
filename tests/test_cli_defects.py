"""A new user's defects (issue 13): a closed stdout, misleading messages, the help's conventions, a silent cap.

(Ctrl-C at any moment, item 13, is in test_interrupts.py; `classify --lines` rows, item 16, in test_classify.py;
`-n 3` at temperature 0 warning, item 17, in test_cli.py::test_greedy_samples_are_announced_as_identical.)"""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest
from checkpoints import make_checkpoint
from cli_helpers import assert_one_line_error, isolated_env, run_sc2, sc2_command

from sc2cli import model as modeling
from sc2cli.cli import main
from sc2cli.errors import CheckpointError


@pytest.fixture(scope="module")
def lm_ckpt(tmp_path_factory) -> Path:
    # A 64-token context, so that the cap of --max-new-tokens is easy to reach.
    return make_checkpoint(tmp_path_factory.mktemp("defects") / "lm", seed=7, max_position_embeddings=64,
                           sliding_window=None)


@pytest.fixture(scope="module")
def seq_ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("defects") / "seqcls-checkpoint",
                           class_name="Starcoder2ForSequenceClassification", seed=1,
                           id2label={0: "bug", 1: "feature"}, pad_token_id=0)


@pytest.fixture
def home(tmp_path, monkeypatch):
    for key, value in isolated_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    return tmp_path


def run_main(args, capsys) -> tuple[int, str, str]:
    """The real entry point (error mapping included) in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_:
        main(args)
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---- 12. a closed stdout: one clear error, exit 1 (as `cat >&-` and `echo >&-` do) --------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("args", [["complete", "x = ", "--max-new-tokens", "2"], ["--help"]],
                         ids=["complete", "help"])
def test_closed_stdout_is_one_clear_error(args, tmp_path):
    command = " ".join(f"'{a}'" for a in sc2_command() + args)
    result = subprocess.run(["bash", "-c", f"exec {command} >&-"], capture_output=True, env=isolated_env(tmp_path),
                            timeout=120)
    line = assert_one_line_error(result, 1, "stdout is closed")
    assert "unexpected" not in line


@pytest.mark.slow
@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_failing_stdout_is_one_clear_error(tmp_path):
    with open("/dev/full", "wb") as full:
        result = subprocess.run(sc2_command() + ["complete", "x = ", "--max-new-tokens", "2"], stdout=full,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=isolated_env(tmp_path),
                                timeout=120)
    assert_one_line_error(result, 1, "cannot write the output to stdout", "No space left on device")
    assert b"Exception ignored" not in result.stderr


def test_stdout_none_in_process_is_one_clear_error(home, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdout", None)
    code, _, err = run_main(["complete", "--help"], capsys)
    assert code == 1 and "cannot write the output: stdout is closed" in one_line(err)


# ---- 15. messages that say what is wrong -------------------------------------------------------------------------
def test_a_classifier_checkpoint_for_completion_says_to_classify(seq_ckpt, home, capsys):
    code, out, err = run_main(["complete", "-m", str(seq_ckpt), "--dtype", "float32", "x"], capsys)
    line = one_line(err)
    assert code == 1 and out == ""
    assert "sequence-classification checkpoint" in line and "sc2 classify" in line, line
    assert "belong together" not in line
    with pytest.raises(CheckpointError, match="token-classification checkpoint"):  # the library says it too
        modeling.Starcoder2ForCausalLM.from_pretrained(
            make_checkpoint(home / "tok", class_name="Starcoder2ForTokenClassification", num_labels=2))


def test_a_file_given_as_the_model_is_named_a_file(lm_ckpt, home, capsys, monkeypatch):
    code, _, err = run_main(["complete", "-m", str(lm_ckpt / "tokenizer.json"), "x"], capsys)
    line = one_line(err)
    assert code == 2 and "is a file, not a checkpoint folder" in line and f"its folder {lm_ckpt} holds one" in line
    assert "does not exist" not in line
    monkeypatch.chdir(lm_ckpt.parent)  # `lm/tokenizer.json` also reads like a Hub repo id: still the file
    code, _, err = run_main(["complete", "-m", "lm/tokenizer.json", "x"], capsys)
    assert code == 2 and "is a file, not a checkpoint folder" in one_line(err)


@pytest.mark.parametrize("flag, environment, fixes", [
    (True, "", ["drop --offline"]),
    (False, "1", ["unset HF_HUB_OFFLINE"]),
    (True, "1", ["drop --offline", "unset HF_HUB_OFFLINE"]),
])
def test_download_offline_says_downloading_needs_the_network(flag, environment, fixes, home, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", environment)
    code, out, err = run_main(["download", "other/missing", *(["--offline"] if flag else [])], capsys)
    line = one_line(err)
    assert code == 1 and out == ""
    assert "downloading it needs the network" in line and all(fix in line for fix in fixes), line
    assert "fetch it with" not in line  # not the advice to run the command that just failed


def test_a_missing_model_with_hf_hub_offline_set_says_to_unset_it(home, capsys):
    code, _, err = run_main(["complete", "-m", "other/missing", "x"], capsys)  # HF_HUB_OFFLINE=1 (isolated_env)
    line = one_line(err)
    assert code == 1 and "unset HF_HUB_OFFLINE" in line and "sc2 download other/missing" in line


@pytest.mark.slow
def test_infill_of_empty_stdin_says_stdin_is_empty(tmp_path):
    result = run_sc2(["infill", "-", "--line", "1"], tmp_path, input=b"")
    assert_one_line_error(result, 2, "stdin is empty")


# ---- 17. help: a bare group, a closed pipe, NO_COLOR, plain argument names ------------------------------------
@pytest.mark.parametrize("args", [[], ["bench"]], ids=["sc2", "sc2-bench"])
def test_a_bare_group_is_a_usage_error_with_its_help_on_stderr(args, home, capsys):
    code, out, err = run_main(args, capsys)
    assert code == 2 and out == ""
    assert f"Usage: {' '.join(['sc2', *args])} [OPTIONS] COMMAND" in err and "Commands" in err


def test_help_asked_for_is_on_stdout_with_exit_0(home, capsys):
    code, out, err = run_main(["--help"], capsys)
    assert code == 0 and "Usage: sc2 [OPTIONS] COMMAND" in out and err == ""


COMMANDS = [["complete"], ["infill"], ["classify"], ["download"], ["info"], ["train"], ["models", "rm"],
            ["config", "set"], ["config", "unset"], ["bench", "infill"], ["bench", "speed"]]


@pytest.mark.parametrize("command", COMMANDS, ids=["-".join(c) for c in COMMANDS])
def test_usage_lines_name_arguments_plainly(command, home, capsys):
    code, out, _ = run_main([*command, "--help"], capsys)
    usage = next(line for line in out.splitlines() if "Usage:" in line).strip()
    assert code == 0 and "{" not in usage and "}" not in usage, usage
    arguments = usage.split("[OPTIONS]", 1)[1].split()
    assert all(re.fullmatch(r"\[?[A-Z][A-Z_]*\]?(\.\.\.)?", a) for a in arguments), usage
    if command == ["infill"]:
        assert usage == "Usage: sc2 infill [OPTIONS] FILE"
    if command == ["download"]:
        assert usage == "Usage: sc2 download [OPTIONS] MODEL"


@pytest.mark.slow
@pytest.mark.parametrize("args", [["--help"], ["complete", "--help"], []], ids=["help", "complete-help", "bare"])
def test_help_into_a_closed_pipe_ends_quietly(args, tmp_path):
    read, write = os.pipe()
    os.close(read)  # `sc2 --help | head -1` once head has gone: every write meets a closed pipe
    try:
        result = subprocess.run(sc2_command() + args, stdout=write, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                env=isolated_env(tmp_path), timeout=60)
    finally:
        os.close(write)
    expected = 2 if not args else 0  # a bare `sc2` prints its help on stderr: no pipe to break
    assert result.returncode == expected, result.stderr.decode()
    assert b"Traceback" not in result.stderr and b"error" not in result.stderr


def _help_at_a_terminal(tmp_path, **env) -> bytes:
    """`sc2 --help` with stdout on a pseudo-terminal (where Rich would use escape codes)."""
    leader, follower = pty.openpty()
    environment = {k: v for k, v in isolated_env(tmp_path).items() if k != "NO_COLOR"}
    try:
        process = subprocess.Popen(sc2_command() + ["--help"], stdout=follower, stderr=subprocess.PIPE,
                                   stdin=subprocess.DEVNULL, env={**environment, "TERM": "xterm-256color", **env})
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other side is closed
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert process.wait(timeout=60) == 0, process.stderr.read().decode()
        process.stderr.close()
        return b"".join(chunks)
    finally:
        os.close(leader)


@pytest.mark.slow
def test_help_at_a_terminal_honours_no_color(tmp_path):
    assert b"\x1b[" in _help_at_a_terminal(tmp_path)  # escape codes without NO_COLOR: the check means something
    plain = _help_at_a_terminal(tmp_path, NO_COLOR="1")
    assert b"\x1b[" not in plain and b"Usage: sc2 [OPTIONS] COMMAND" in plain


# ---- 17. --max-new-tokens above what the context leaves: said on stderr, not capped silently ---------------------
def test_max_new_tokens_beyond_the_context_is_announced(lm_ckpt, home, capsys):
    base = ["complete", "-m", str(lm_ckpt), "--dtype", "float32", "--ignore-eos", "--no-stream"]
    code, out, err = run_main([*base, "--max-new-tokens", "100", "x = 1"], capsys)
    assert code == 0 and out
    warning = one_line(err)
    assert warning.startswith("warning: --max-new-tokens 100 does not fit") and "64-token context" in warning
    room = int(re.search(r"at most (\d+) tokens", warning).group(1))
    assert 0 < room < 64
    code, out, err = run_main([*base, "--max-new-tokens", str(room), "x = 1"], capsys)
    assert code == 0 and out and err == ""  # exactly what fits: nothing to say


# ---- `python -m sc2cli`: the same command; importing the module runs nothing ----------------------------------
@pytest.mark.slow
def test_python_m_sc2cli_is_the_command_and_importing_it_runs_nothing(tmp_path):
    env = isolated_env(tmp_path)
    result = subprocess.run([sys.executable, "-m", "sc2cli", "--help"], capture_output=True, env=env, timeout=60)
    assert result.returncode == 0 and b"Usage: sc2 [OPTIONS] COMMAND" in result.stdout, result.stderr.decode()
    result = subprocess.run([sys.executable, "-c", "import sc2cli.__main__"], capture_output=True, env=env,
                            timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
