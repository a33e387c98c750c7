"""Issue 13 (a new user's report), items 9, 11, 14, 17 and 20: `sc2 train` refuses what cannot train before it
writes anything and leaves no half-made folder; a rerun with other settings is refused rather than silently
resuming the old ones; `sc2 config set` refuses bad values, and a bad stored value names the file it came from;
the README, the Makefile and the command agree on the shipped model's recipe.

Commands run in-process through `sc2cli.cli.main` (the real error mapping: one line, exit code), so only the tests
that train are slow."""

from __future__ import annotations

import inspect
import json
import re
import shlex
import signal
from pathlib import Path

import pytest
import torch
from checkpoints import make_checkpoint
from cli_helpers import isolated_env

from sc2cli import settings
from sc2cli.cli import main
from sc2cli.errors import InputError
from sc2cli.train import data as trainset
from sc2cli.train.bpe import MIN_VOCAB_SIZE, train_bpe
from sc2cli.train.trainer import STATE_FILE, ModelShape, SavedRunMismatch, TrainSettings, train

ROOT = Path(__file__).resolve().parent.parent

CORPUS = {
    "pkg/core.py": "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n" * 6,
    "pkg/util.py": "import os\n\n\ndef home():\n    return os.path.expanduser('~')\n" * 6,
    "tools/run.py": "import sys\n\nfor arg in sys.argv[1:]:\n    print(arg.upper())\n" * 6,
    "tools/more.py": "class Box:\n    def __init__(self, value):\n        self.value = value\n" * 6,
}
SHAPE = ModelShape(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=64, sliding_window=24, max_position_embeddings=128, vocab_size=320)
# The same tiny model as command-line options (two steps, so that a run that should be refused ends soon).
TINY = ["--max-steps", "2", "--hidden-size", "32", "--layers", "2", "--heads", "4", "--kv-heads", "2",
        "--intermediate-size", "64", "--sliding-window", "24", "--max-positions", "128", "--vocab-size", "320",
        "--seq-len", "48", "--batch-size", "2", "--warmup-steps", "1", "--save-every", "1", "--eval-every", "1"]


@pytest.fixture
def home(tmp_path, monkeypatch):
    for key, value in isolated_env(tmp_path / "home").items():
        monkeypatch.setenv(key, value)
    return tmp_path / "home"


@pytest.fixture
def corpus(tmp_path) -> Path:
    root = tmp_path / "src"
    for path, text in CORPUS.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root


def sc2(args: list[str], capsys) -> tuple[int, str, str]:
    """`sc2 ARGS` in this process: (exit code, stdout, stderr)."""
    handler = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as exit_:
            main([str(a) for a in args])
    finally:
        signal.signal(signal.SIGTERM, handler)
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


def one_line_error(result: tuple[int, str, str], code: int, *needles: str) -> str:
    status, _, err = result
    assert status == code, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("sc2: error: "), err
    assert "unexpected" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _settings(corpus: Path, out: Path, **changes) -> TrainSettings:
    base = dict(data=str(corpus), out=str(out), seq_len=48, batch_size=2, max_steps=4, warmup_steps=1,
                save_every=100, eval_every=1, heldout_fraction=0.0, shape=SHAPE)
    return TrainSettings(**{**base, **changes})


# ---- 9: impossible shapes -----------------------------------------------------------------------------------------

def test_sequences_longer_than_the_model_are_refused(corpus, home, tmp_path, capsys):
    out = tmp_path / "runs" / "x"
    line = one_line_error(sc2(["train", corpus, "--out", out, *TINY, "--seq-len", "4096"], capsys), 2,
                          "--seq-len", "4096", "128")
    assert "positions" in line
    assert not (tmp_path / "runs").exists()


def test_sequences_longer_than_the_starting_checkpoint_are_refused(corpus, home, tmp_path, capsys):
    base = make_checkpoint(tmp_path / "base", max_position_embeddings=256)
    out = tmp_path / "tuned"
    one_line_error(sc2(["train", corpus, "--out", out, "--init", base, "--seq-len", "1000", "--batch-size", "1",
                        "--max-steps", "1"],
                       capsys), 2, "--seq-len", "1000", "256", str(base))
    assert not out.exists()


@pytest.mark.slow
def test_rerun_with_other_settings_is_refused_and_says_how_to_start_over(corpus, home, tmp_path, capsys):
    out = tmp_path / "run"
    status, stdout, err = sc2(["train", corpus, "--out", out, *TINY, "--max-steps", "1"], capsys)
    assert status == 0, err
    saved = (out / STATE_FILE).read_text()
    for changed, started, asked in ((["--layers", "3"], "--layers 2", "--layers 3"),
                                    (["--seq-len", "64"], "--seq-len 48", "--seq-len 64"),
                                    (["--lr", "0.01"], "--lr 0.001", "--lr 0.01")):
        line = one_line_error(sc2(["train", corpus, "--out", out, *TINY, "--max-steps", "2", *changed], capsys), 2,
                              f"--out: {out}", started, asked, "--restart", "new --out", "delet")
        assert line.index(started) < line.index(asked)
        assert (out / STATE_FILE).read_text() == saved  # the run is untouched
    # What a rerun may change (more steps, other evaluation and checkpoint intervals) it does change.
    status, _, err = sc2(["train", corpus, "--out", out, *TINY, "--max-steps", "2", "--eval-every", "2"], capsys)
    assert status == 0, err
    state = json.loads((out / STATE_FILE).read_text())
    assert state["state"]["step"] == 2 and state["settings"]["eval_every"] == 2


@pytest.mark.slow
def test_library_rerun_with_another_shape_is_refused(corpus, tmp_path):
    out = tmp_path / "run"
    train(_settings(corpus, out, max_steps=1, save_every=1))
    other = ModelShape(**{**SHAPE.__dict__, "hidden_size": 64})
    with pytest.raises(SavedRunMismatch) as err:
        train(_settings(corpus, out, max_steps=2, save_every=1, shape=other))
    assert err.value.differences == [("hidden_size", 32, 64)]
    assert "delete" in str(err.value) and err.value.field == "out"
    assert train(_settings(corpus, out, max_steps=2, save_every=1, shape=other), resume=False).step == 2  # restart


# ---- 11: clear errors, no half-made folder --------------------------------------------------------------------------

@pytest.mark.parametrize("options, needles", [
    (["--heads", "4", "--kv-heads", "3"], ["--kv-heads", "multiple"]),
    (["--hidden-size", "30", "--heads", "6", "--kv-heads", "2"], ["--hidden-size", "even"]),
    (["--hidden-size", "2", "--heads", "4"], ["--hidden-size", "width"]),
    (["--layers", "0"], ["--layers", "at least 1"]),
    (["--max-positions", "0"], ["--max-positions"]),
    (["--vocab-size", "10"], ["--vocab-size", str(MIN_VOCAB_SIZE), "10"]),  # 17: not silently 294
    (["--warmup-steps", "-1"], ["--warmup-steps"]),
])
def test_impossible_model_is_a_one_line_usage_error_and_leaves_no_folder(options, needles, corpus, home, tmp_path,
                                                                          capsys):
    out = tmp_path / "runs" / "x"
    one_line_error(sc2(["train", corpus, "--out", out, *TINY, *options], capsys), 2, *needles)
    assert not (tmp_path / "runs").exists()


def test_out_that_is_a_file_is_refused(corpus, home, tmp_path, capsys):
    file = tmp_path / "outfile.txt"
    file.write_text("keep me\n")
    one_line_error(sc2(["train", corpus, "--out", file, *TINY], capsys), 2, "--out", str(file), "is a file")
    one_line_error(sc2(["train", corpus, "--out", file / "run", *TINY], capsys), 2, "--out", "is a file")
    assert file.read_text() == "keep me\n"


def test_folder_of_other_files_is_refused(corpus, tmp_path):
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "notes.md").write_text("mine\n")
    with pytest.raises(InputError, match="notes.md") as err:
        train(_settings(corpus, mine))
    assert err.value.field == "out"
    assert [p.name for p in mine.iterdir()] == ["notes.md"]


class Stop(Exception):
    pass


def _stop_at(step: int):
    def report(state, loss, tokens_per_s):
        if state.step == step:
            raise Stop()
    return report


@pytest.mark.slow
def test_run_failing_before_its_first_checkpoint_removes_what_it_created(corpus, tmp_path):
    out = tmp_path / "a" / "b" / "run"
    with pytest.raises(Stop):
        train(_settings(corpus, out, snapshot_every=1), on_progress=_stop_at(2))
    assert not (tmp_path / "a").exists()  # the folders it created, snapshots included
    empty = tmp_path / "empty"
    empty.mkdir()  # the user's folder stays, without what the run put in it
    with pytest.raises(Stop):
        train(_settings(corpus, empty, snapshot_every=1), on_progress=_stop_at(2))
    assert empty.is_dir() and not any(empty.iterdir())

    def ctrl_c(*args):
        raise KeyboardInterrupt()

    with pytest.raises(KeyboardInterrupt):
        train(_settings(corpus, out), on_progress=ctrl_c)
    assert not (tmp_path / "a").exists()


@pytest.mark.slow
def test_run_failing_after_a_checkpoint_keeps_it_to_resume(corpus, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(Stop):
        train(_settings(corpus, out, save_every=1), on_progress=_stop_at(2))
    assert json.loads((out / STATE_FILE).read_text())["state"]["step"] == 2
    assert train(_settings(corpus, out, save_every=1)).step == 4


# ---- 17: the vocabulary's minimum, no held-out data ---------------------------------------------------------------

def test_vocabulary_below_the_minimum_is_refused():
    assert MIN_VOCAB_SIZE == 294  # 38 special tokens and 256 bytes
    with pytest.raises(InputError, match="at least 294") as err:
        train_bpe(["x = 1\n"], 10)
    assert err.value.field == "vocab_size"
    assert train_bpe(["x = 1\n"], MIN_VOCAB_SIZE).get_vocab_size() == MIN_VOCAB_SIZE


@pytest.mark.slow
def test_without_held_out_data_it_says_so_and_records_no_nulls(corpus, tmp_path):
    files = trainset.collect_files(corpus)
    assert not trainset.split_files(files, 0.05)[1]  # the precondition: no file falls in the held-out 5%
    notes = []
    out = tmp_path / "run"
    state = train(_settings(corpus, out, heldout_fraction=0.05, max_steps=2, save_every=2), on_note=notes.append)
    assert len(notes) == 1 and "no held-out data" in notes[0] and "not measured" in notes[0]
    assert [len(row) for row in state.history] == [3, 3]
    assert json.loads((out / STATE_FILE).read_text())["state"]["history"] == state.history
    assert all(None not in row for row in state.history)


@pytest.mark.slow
def test_with_held_out_data_only_measured_steps_carry_a_held_out_loss(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    for i in range(12):
        (root / f"m{i}.py").write_text("".join(f"def f{i}_{j}(x):\n    return x * {j}\n" for j in range(30)))
    held = trainset.split_files(trainset.collect_files(root), 0.5)[1]
    assert held  # the precondition
    notes = []
    state = train(_settings(root, tmp_path / "run", heldout_fraction=0.5, max_steps=3, eval_every=2),
                  on_note=notes.append)
    assert not notes
    assert [len(row) for row in state.history] == [3, 4, 4]  # step 2, and the last step
    assert all(isinstance(row[3], float) for row in state.history[1:])


# ---- 14: config values checked at `set`, bad stored values name their source ---------------------------------------

@pytest.mark.parametrize("key, value, needle", [
    ("device", "gpu", "auto, cpu, cuda, cuda:N or mps"),
    ("device", "cuda:x", "cuda:N"),
    ("dtype", "float64", "float32, bfloat16 or float16"),
    ("model", "", "empty"),
    ("model", "   ", "empty"),
])
def test_config_set_refuses_bad_values(key, value, needle, home, capsys):
    one_line_error(sc2(["config", "set", key, value], capsys), 2, repr(value), needle, "nothing was saved")
    assert not settings.config_path().exists()


def test_config_set_accepts_good_values_in_their_plain_spelling(home, capsys):
    for key, value, stored in (("device", "CUDA:1", "cuda:1"), ("device", "mps", "mps"), ("device", "cpu", "cpu"),
                               ("dtype", " BFloat16", "bfloat16"), ("dtype", "auto", "auto"), ("model", "a/b", "a/b")):
        status, _, err = sc2(["config", "set", key, value], capsys)
        assert status == 0, err
        assert settings.read_file()[key] == stored


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"), seed=4)


def _store(text: str) -> Path:
    path = settings.config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize("stored, needles", [
    ('device = "gpu"\n', ["the device 'gpu' from", "auto, cpu, cuda, cuda:N or mps", "sc2 config set device"]),
    ('dtype = "float64"\n', ["the dtype 'float64' from", "float32, bfloat16 or float16"]),
    ('model = ""\n', ["the model '' from", "empty"]),
])
def test_bad_stored_value_names_the_config_file(stored, needles, checkpoint, home, capsys):
    path = _store(stored)
    args = ["complete", "--max-new-tokens", "1", "x"]
    if "model" not in stored:
        args[1:1] = ["-m", checkpoint]
    line = one_line_error(sc2(args, capsys), 2, str(path), *needles)
    assert "--device" not in line and "--dtype" not in line  # flags the user never gave


def test_bad_value_from_the_environment_names_the_variable(checkpoint, home, capsys, monkeypatch):
    monkeypatch.setenv("SC2_DEVICE", "gpu")
    one_line_error(sc2(["complete", "-m", checkpoint, "x"], capsys), 2, "the device 'gpu' from SC2_DEVICE",
                   "SC2_DEVICE")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_stored_device_missing_here_names_the_config_file(checkpoint, home, capsys):
    path = _store('device = "cuda"\n')
    line = one_line_error(sc2(["complete", "-m", checkpoint, "x"], capsys), 2, f"the device 'cuda' from {path}",
                          "CUDA")
    assert "--device" not in line


def test_given_flags_override_bad_stored_values_and_config_shows_them(checkpoint, home, capsys):
    _store('device = "gpu"\ndtype = "float64"\n')
    status, _, err = sc2(["complete", "-m", checkpoint, "--device", "cpu", "--dtype", "float32",
                          "--max-new-tokens", "1", "x"], capsys)
    assert status == 0, err
    status, shown, err = sc2(["config"], capsys)
    assert status == 0, err
    assert "device = gpu" in shown and "not valid" in shown
    status, shown, _ = sc2(["config", "--json"], capsys)
    assert "problem" in json.loads(shown)["dtype"] and "problem" not in json.loads(shown)["model"]
    status, _, err = sc2(["config", "set", "device", "cpu"], capsys)  # a bad file is mended with `set`
    assert status == 0, err
    assert settings.read_file() == {"device": "cpu", "dtype": "float64"}


# ---- 20: one recipe for the shipped model -------------------------------------------------------------------------

def _train_args(command: str) -> list[str]:
    return shlex.split(command.split("sc2 train", 1)[1].split("#")[0])


def test_readme_makefile_and_defaults_agree_on_the_tiny_model_recipe():
    makefile = (ROOT / "Makefile").read_text()
    target = re.search(r"^tiny-model:.*\n((?:\t.*\n)+)", makefile, re.M).group(1)
    make_lines = [line for line in target.splitlines() if "sc2 train" in line]
    assert len(make_lines) == 1, target
    make_args = _train_args(make_lines[0])

    readme = (ROOT / "README.md").read_text().splitlines()
    quoted = [re.search(r"sc2 train [^`#]*", line).group(0) for line in readme
              if "make tiny-model" in line and "sc2 train" in line]
    assert len(quoted) >= 2, "the README's recipe lines moved"
    for command in quoted:
        assert _train_args(command) == make_args, (command, make_lines[0])

    from sc2cli.cli.train import train as command_fn

    defaults = {name: p.default for name, p in inspect.signature(command_fn).parameters.items()}
    given = dict(zip(make_args[1::2], make_args[2::2]))
    assert make_args[0] == "stdlib" and set(given) == {"--out"}, make_args  # the recipe is the defaults
    steps = int(given.get("--max-steps", defaults["max_steps"]))
    tokens = steps * defaults["batch_size"] * defaults["seq_len"] * defaults["grad_accum"]
    table = next(line for line in readme if line.startswith("| training |"))
    assert f"**{tokens / 1e6:.2f}M tokens**" in table, (steps, table)
    assert f"{steps:,} steps" in table
