"""`sc2 classify` end to end: sequence, token and zero-shot modes on tiny checkpoints, checked against the model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from checkpoints import make_checkpoint
from cli_helpers import assert_one_line_error, isolated_env, run_sc2
from typer.testing import CliRunner

from sc2cli import model as modeling
from sc2cli.cli import app
from sc2cli.errors import UsageError
from sc2cli.tokenizer import Tokenizer

ID2LABEL = {0: "bug", 1: "feature", 2: "question"}
LINES = ["x", "def parse(path):", "for i in range(10): total += values[i] * weights[i]"]


@pytest.fixture(scope="module")
def seq_ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("seq"), class_name="Starcoder2ForSequenceClassification",
                           seed=1, id2label=ID2LABEL, pad_token_id=0)


@pytest.fixture(scope="module")
def tok_ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("tok"), class_name="Starcoder2ForTokenClassification", seed=2,
                           num_labels=2)


@pytest.fixture(scope="module")
def lm_ckpt(tmp_path_factory):
    # No pad id: zero-shot batching falls back to the tokenizer's end-of-text id.
    return make_checkpoint(tmp_path_factory.mktemp("lm"), seed=3, pad_token_id=None)


@pytest.fixture
def home(tmp_path, monkeypatch):
    for key, value in isolated_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    return tmp_path


def invoke(args, input=None):
    result = CliRunner().invoke(app, ["classify", "--dtype", "float32", *args], input=input, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def invoke_json(args, input=None):
    return json.loads(invoke([*args, "--json"], input=input))


def parse_table(text: str) -> list[list[str]]:
    return [line.split("\t") for line in text.splitlines()]


def direct(ckpt, class_name):
    return getattr(modeling, class_name).from_pretrained(ckpt), Tokenizer.from_dir(ckpt)


# ---- sequence classification ----------------------------------------------------------------------------------
def test_sequence_labels_are_sorted_probabilities_matching_the_model(seq_ckpt, home):
    text = "Crash when the file is empty"
    rows = parse_table(invoke(["-m", str(seq_ckpt), text]))
    assert sorted(label for label, _ in rows) == sorted(ID2LABEL.values())
    probs = [float(p) for _, p in rows]
    assert probs == sorted(probs, reverse=True)
    assert sum(probs) == pytest.approx(1.0, abs=2e-4)

    model, tokenizer = direct(seq_ckpt, "Starcoder2ForSequenceClassification")
    with torch.no_grad():
        logits = model(torch.tensor([tokenizer.encode(text)])).logits[0]
    assert rows[0][0] == ID2LABEL[int(logits.argmax())]
    expected = dict(zip(ID2LABEL.values(), torch.softmax(logits, -1).tolist()))
    for label, p in rows:
        assert float(p) == pytest.approx(expected[label], abs=1e-4)

    top2 = parse_table(invoke(["-m", str(seq_ckpt), "--top", "2", text]))
    assert top2 == rows[:2]


def test_lines_are_batched_with_left_padding_like_single_texts(seq_ckpt, home):
    batched = invoke_json(["-m", str(seq_ckpt), "--lines"], input="\n".join([LINES[0], "", *LINES[1:]]) + "\n")
    assert batched["mode"] == "sequence"
    assert [r["line"] for r in batched["results"]] == [1, 3, 4]
    assert [r["text"] for r in batched["results"]] == LINES
    assert len({r["num_tokens"] for r in batched["results"]}) == 3  # really different lengths
    for line, result in zip(LINES, batched["results"]):
        alone = invoke_json(["-m", str(seq_ckpt), line])["results"][0]
        assert [d["label"] for d in result["labels"]] == [d["label"] for d in alone["labels"]]
        for got, want in zip(result["labels"], alone["labels"]):
            assert got["score"] == pytest.approx(want["score"], abs=1e-5)
    text = invoke(["-m", str(seq_ckpt), "--lines"], input="\n".join(LINES))
    assert [row[0] for row in parse_table(text)] == [r["labels"][0]["label"] for r in batched["results"]]


def test_lines_rows_line_up_with_the_input_lines(seq_ckpt, home):
    # Issue 13 item 16: one row per input line, an empty row for a blank one, so that
    # `paste input.txt <(sc2 classify --lines < input.txt)` puts each label beside its line. Lines end at "\n" only,
    # as `paste` and `wc -l` count them (a form feed or U+2028 inside a line does not start a new row).
    lines = [LINES[0], "", LINES[1], "   ", "page\x0cbreak\u2028here", LINES[2], ""]
    data = "\n".join(lines) + "\n"
    rows = invoke(["-m", str(seq_ckpt), "--lines"], input=data).split("\n")
    assert rows[-1] == "" and len(rows[:-1]) == len(lines) == data.count("\n")
    for line, row in zip(lines, rows):
        if line.strip():
            alone = parse_table(invoke(["-m", str(seq_ckpt), "--top", "1", line]))[0]
            assert row.split("\t") == alone, (line, row)
        else:
            assert row == "", (line, row)
    numbered = invoke_json(["-m", str(seq_ckpt), "--lines"], input=data)["results"]
    assert [r["line"] for r in numbered] == [1, 3, 5, 6]  # --json: each result carries its line number
    crlf = invoke(["-m", str(seq_ckpt), "--lines"], input="\r\n".join(lines) + "\r\n")
    assert crlf.split("\n") == rows


def test_lines_without_a_pad_id_run_one_at_a_time(tmp_path, home):
    ckpt = make_checkpoint(tmp_path / "nopad", class_name="Starcoder2ForSequenceClassification", seed=1,
                           id2label=ID2LABEL, pad_token_id=None)
    batched = invoke_json(["-m", str(ckpt), "--lines"], input="\n".join(LINES))
    for line, result in zip(LINES, batched["results"]):
        alone = invoke_json(["-m", str(ckpt), line])["results"][0]
        assert result["labels"][0]["score"] == pytest.approx(alone["labels"][0]["score"], abs=1e-5)


def test_stdin_piped_or_dash_equals_the_argument(seq_ckpt, home):
    expected = invoke(["-m", str(seq_ckpt), "fix the parser"])
    assert invoke(["-m", str(seq_ckpt)], input="fix the parser\n") == expected
    assert invoke(["-m", str(seq_ckpt), "-"], input="fix the parser") == expected


def test_sequence_json_schema(seq_ckpt, home):
    data = invoke_json(["-m", str(seq_ckpt), "--top", "2", "hello"])
    assert data["model"] == str(seq_ckpt) and data["mode"] == "sequence" and data["scoring"] == "softmax"
    [result] = data["results"]
    assert set(result) == {"text", "num_tokens", "labels"} and result["text"] == "hello"
    assert len(result["labels"]) == 2
    assert all(set(d) == {"label", "score"} for d in result["labels"])


@pytest.mark.parametrize("overrides, scoring", [
    ({"id2label": ID2LABEL, "problem_type": "multi_label_classification"}, "sigmoid"),
    ({"num_labels": 1}, "regression"),
])
def test_multi_label_uses_sigmoid_and_regression_the_raw_score(overrides, scoring, tmp_path, home):
    ckpt = make_checkpoint(tmp_path / scoring, class_name="Starcoder2ForSequenceClassification", seed=5, **overrides)
    data = invoke_json(["-m", str(ckpt), "hello world"])
    assert data["scoring"] == scoring
    model, tokenizer = direct(ckpt, "Starcoder2ForSequenceClassification")
    with torch.no_grad():
        logits = model(torch.tensor([tokenizer.encode("hello world")])).logits[0]
    want = torch.sigmoid(logits) if scoring == "sigmoid" else logits
    got = {d["label"]: d["score"] for d in data["results"][0]["labels"]}
    assert got == pytest.approx({model.config.id2label[i]: float(v) for i, v in enumerate(want)}, abs=1e-5)


# ---- token classification -------------------------------------------------------------------------------------
def test_tokens_one_line_per_token(tok_ckpt, home):
    text = "def f(x):\n\treturn x"
    rows = parse_table(invoke(["-m", str(tok_ckpt), "--tokens", text]))
    model, tokenizer = direct(tok_ckpt, "Starcoder2ForTokenClassification")
    ids = tokenizer.encode(text)
    assert len(rows) == len(ids)
    assert all(len(row) == 3 and row[1] in ("LABEL_0", "LABEL_1") and 0.5 <= float(row[2]) <= 1 for row in rows)
    assert "".join(row[0] for row in rows) == text.replace("\n", "\\n").replace("\t", "\\t")

    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    assert [row[1] for row in rows] == [f"LABEL_{i}" for i in logits.argmax(-1).tolist()]

    data = invoke_json(["-m", str(tok_ckpt), "--tokens", text])
    assert data["mode"] == "tokens"
    tokens = data["results"][0]["tokens"]
    assert [t["id"] for t in tokens] == ids
    assert all(set(t) == {"token", "id", "label", "score"} for t in tokens)
    assert "".join(t["token"] for t in tokens) == text


def test_tokens_with_lines_match_single_texts(tok_ckpt, home):
    batched = invoke_json(["-m", str(tok_ckpt), "--tokens", "--lines"], input="\n".join(LINES))
    for line, result in zip(LINES, batched["results"]):
        alone = invoke_json(["-m", str(tok_ckpt), "--tokens", line])["results"][0]
        assert [t["label"] for t in result["tokens"]] == [t["label"] for t in alone["tokens"]]
        for got, want in zip(result["tokens"], alone["tokens"]):
            assert got["score"] == pytest.approx(want["score"], abs=1e-5)


# ---- zero-shot ------------------------------------------------------------------------------------------------
def test_zero_shot_matches_a_direct_log_likelihood(lm_ckpt, home):
    text, labels = "# language: ", ["python", "rust", "javascript"]
    data = invoke_json(["-m", str(lm_ckpt), "--labels", ",".join(labels), text])
    assert data["mode"] == "zero-shot"
    items = data["results"][0]["labels"]
    assert sorted(d["label"] for d in items) == sorted(labels)
    assert sum(d["score"] for d in items) == pytest.approx(1.0, abs=1e-6)
    assert [d["score"] for d in items] == sorted((d["score"] for d in items), reverse=True)

    model, tokenizer = direct(lm_ckpt, "Starcoder2ForCausalLM")
    prompt = tokenizer.encode(text)
    totals = []
    with torch.no_grad():
        for label in labels:
            label_ids = tokenizer.encode(label)
            logp = torch.log_softmax(model(torch.tensor([prompt + label_ids])).logits[0].double(), -1)
            totals.append(sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(label_ids)))
    probs = torch.softmax(torch.tensor(totals), -1).tolist()
    by_label = {d["label"]: d for d in items}
    for label, total, p in zip(labels, totals, probs):
        n = len(tokenizer.encode(label))
        assert by_label[label]["logprob"] == pytest.approx(total, abs=1e-4)
        assert by_label[label]["mean_logprob"] == pytest.approx(total / n, abs=1e-4)
        assert by_label[label]["num_tokens"] == n
        assert by_label[label]["score"] == pytest.approx(p, abs=1e-5)

    rows = parse_table(invoke(["-m", str(lm_ckpt), "--labels", " python , rust,javascript", "--top", "1", text]))
    assert rows == [[items[0]["label"], f"{items[0]['score']:.4f}"]]


def test_zero_shot_lines(lm_ckpt, home):
    data = invoke_json(["-m", str(lm_ckpt), "--labels", "a,b", "--lines"], input="\n".join(LINES[:2]))
    for line, result in zip(LINES, data["results"]):
        alone = invoke_json(["-m", str(lm_ckpt), "--labels", "a,b", line])["results"][0]
        assert {d["label"]: d["score"] for d in result["labels"]} == pytest.approx(
            {d["label"]: d["score"] for d in alone["labels"]}, abs=1e-5)


# ---- errors ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("which, args, needle", [
    ("lm", ["x"], "--labels"),
    ("seq", ["--tokens", "x"], "--tokens"),
    ("seq", ["--top", "0", "x"], "--top"),
])
def test_usage_errors_are_one_line_exit_2(which, args, needle, seq_ckpt, lm_ckpt, tmp_path):
    ckpt = {"seq": seq_ckpt, "lm": lm_ckpt}[which]
    assert_one_line_error(run_sc2(["classify", "-m", str(ckpt), *args], tmp_path), 2, needle)


@pytest.mark.parametrize("args, input, needle", [
    (["--labels", "a,b", "--tokens", "x"], None, "--labels"),
    (["--labels", "a,,b", "x"], None, "empty label"),
    (["--labels", "a,a", "x"], None, "repeats"),
    (["--labels", "a,b", "-"], "\n", "empty"),
    (["--labels", "a,b", "--lines"], "\n  \n", "no non-empty lines"),
    (["--top", "-1", "x"], None, "--top"),
])
def test_bad_combinations_raise_usage_errors(args, input, needle, lm_ckpt, home):
    result = CliRunner().invoke(app, ["classify", "-m", str(lm_ckpt), *args], input=input)
    assert isinstance(result.exception, UsageError), result.exception
    assert needle in str(result.exception)


@pytest.mark.slow
def test_help_never_imports_torch(tmp_path):
    code = ("import sys; from sc2cli.cli import main\n"
            "try:\n    main(['classify', '--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, env=isolated_env(tmp_path), timeout=60)
    assert result.returncode == 0, result.stderr.decode()
