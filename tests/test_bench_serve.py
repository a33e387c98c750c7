"""`sc2 bench serve`: the windows it sends, and one tiny run of every part on the shipped model (float32, so that a
reused prompt gives the very tokens a cold one does), checked for the structure of its JSON and the invariants of
prompt reuse. The run starts real processes: two servers and a cold `sc2 infill`."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

import pytest
from cli_helpers import assert_one_line_error, run_sc2

from sc2cli import hub
from sc2cli.bench import serve, workload
from sc2cli.tokenizer import Tokenizer

KEYSTROKES = 2
FAST = ["--shape", "shipped", "--dtype", "float32", "--rounds", "1", "--keystrokes", str(KEYSTROKES),
        "--file-tokens", "400", "--new-tokens", "8", "--clients", "1,2", "--requests", "2", "--json"]


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_dir(hub.shipped_model_dir())


def test_editing_window_is_a_cut_of_the_file(tokenizer):
    window = workload.editing_window(tokenizer, 1500, 20)
    _, source = workload.stdlib_file(workload.EDIT_FILE)
    assert window.text(len(window.typed)) in source  # whole lines of the file, the statement typed in full
    typed_line = source.splitlines()[window.first_line + window.cursor_line - 2]
    assert typed_line == window.indent + window.typed and len(window.typed) >= 20
    assert window.indent and not window.indent.strip()  # inside a function body
    assert window.after.startswith("\n")
    tokens = len(tokenizer.encode_text(window.text()))
    assert 1300 <= tokens <= 1500
    before = len(tokenizer.encode_text(window.prefix()))
    assert 0.6 <= before / tokens <= 0.8
    # Each keystroke adds one character at the cursor and nothing else.
    assert [window.prefix(k)[-1] for k in range(1, 4)] == list(window.typed[:3])


def test_concurrent_windows_differ(tokenizer):
    plan = workload.concurrent_windows(tokenizer, 600, 4, 3)
    assert [len(requests) for requests in plan] == [3, 3, 3, 3]
    prompts = [w.prefix() + w.after for requests in plan for w in requests]
    assert len(set(prompts)) == len(prompts)
    assert len({requests[0].path for requests in plan}) == 4  # a file per client


def test_percentile():
    assert serve.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert serve.percentile([1.0, 2.0], 95) == pytest.approx(1.95)
    assert serve.percentile([5.0], 95) == 5.0
    assert serve.percentile([], 50) is None


@pytest.mark.slow
def test_bad_options(tmp_path):
    result = run_sc2(["bench", "serve", "--shape", "huge"], tmp_path)
    assert_one_line_error(result, 2, "unknown shape 'huge'")
    result = run_sc2(["bench", "serve", "--clients", "1,0"], tmp_path)
    assert_one_line_error(result, 2, "--clients")


@pytest.mark.slow
def test_tiny_run_on_the_shipped_model(tmp_path):
    result = run_sc2(["bench", "serve", *FAST], tmp_path, timeout=120)  # ~30 s on 2 idle cores
    assert result.returncode == 0, result.stderr.decode()
    doc = json.loads(result.stdout)
    assert set(doc) >= {"machine", "settings", "models", "targets", "llama_cpp_spec"}
    (model,) = doc["models"]
    assert model["key"] == "shipped" and model["parameters"] > 1e6

    # Cold against warm: the same prompt, the same greedy middle; the second warm request reuses all but one token.
    cold = model["cold_warm"]
    (one_round,) = cold["rounds"]
    assert cold["summary"]["same_middle"], one_round
    assert one_round["warm"]["evaluated"] == one_round["warm"]["prompt_tokens"] == cold["summary"]["prompt_tokens"]
    assert one_round["warm_reused"]["evaluated"] == 1
    assert one_round["warm_reused"]["reused"] == one_round["warm"]["prompt_tokens"] - 1
    for kind in ("warm", "warm_reused"):
        assert 0 < one_round[kind]["first_token_s"] <= one_round[kind]["total_s"]
    if one_round["cold"]["content"]:
        assert 0 < one_round["cold"]["first_text_s"] <= one_round["cold"]["total_s"]

    # The editing flow: reuse off evaluates every prompt token; reuse on, after the first request, only the
    # suffix (and its markers) and what changed at the cursor.
    requests = model["editing"]["requests"]
    on, off = requests["reuse_on"], requests["reuse_off"]
    assert len(on) == len(off) == KEYSTROKES + 1
    assert [r["typed"] for r in on] == list(range(KEYSTROKES + 1))
    suffix = model["suffix_tokens"]
    for r in off:
        assert r["evaluated"] == r["prompt_tokens"] and r["reused"] == 0
    assert on[0]["reused"] <= 4  # the warm-up was another file: nothing to reuse but <fim_prefix> and so on
    for r_on, r_off in zip(on[1:], off[1:]):
        assert r_on["prompt_tokens"] == r_off["prompt_tokens"]
        assert r_on["evaluated"] + r_on["reused"] == r_on["prompt_tokens"]
        assert suffix + serve.FIM_MARKERS_AFTER_PREFIX <= r_on["evaluated"] < r_off["evaluated"]
        assert r_on["content"] == r_off["content"]  # float32: reuse changes no token
    summary = model["editing"]["summary"]
    assert summary["evaluated_on_over_off"] < 1
    assert 0 <= summary["beyond_suffix"] <= serve.CHANGED_SLACK

    # Concurrency: every request answered, by a server per level.
    levels = model["concurrency"]
    assert [level["clients"] for level in levels] == [1, 2]
    for level in levels:
        s = level["summary"]
        assert s["requests"] == 2 and s["errors"] == 0
        assert s["generated_tok_s"] > 0 and s["latency_p95_s"] >= s["latency_p50_s"] > 0
    assert {r["client"] for r in levels[1]["requests"]} == {0, 1}

    # Every server it started is gone.
    assert [server["name"] for server in model["servers"]] == ["sc2 serve --parallel 1", "sc2 serve --parallel 2"]
    for server in model["servers"]:
        address = urlsplit(server["url"])
        with socket.socket() as s, pytest.raises(OSError):
            s.connect((address.hostname, address.port))

    targets = {t["target"]: t for t in doc["targets"]}
    assert any("5%" in name for name in targets) and all(isinstance(t["met"], bool) for t in targets.values())
    assert "stopped" not in result.stdout.decode()  # progress and server logs stay off stdout
