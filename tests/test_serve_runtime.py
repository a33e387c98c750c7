"""`sc2 serve` at run time: prompt reuse gives the results of cold runs, a client that leaves frees its slot at
once, a burst of requests gets 200 or 503 and never a 500, SIGTERM ends cleanly, and `--server` makes the
commands print exactly what they print locally, without importing torch."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import subprocess
import sys
import time

import httpx
import pytest

from cli_helpers import isolated_env, run_sc2
from serving import running_server

pytestmark = pytest.mark.slow

FILE = '''import os


def read_config(path):
    """Read a key = value file into a dict."""
    values = {}
    with open(path) as handle:
        for line in handle:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def main():
    config = read_config(os.environ.get("CONFIG", "app.cfg"))
    print(config)
'''


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("serve-runtime")


@pytest.fixture(scope="module")
def server(home):
    """float32: the project's correctness contract (greedy tokens equal) is stated in float32."""
    with running_server(home / "main", "--dtype", "float32", "--parallel", "2", "--queue", "4") as s:
        yield s


def _infill(url: str, prefix: str, suffix: str, reuse: bool = True, **extra) -> dict:
    body = {"input_prefix": prefix, "input_suffix": suffix, "n_predict": 24, "cache_prompt": reuse, **extra}
    reply = httpx.post(f"{url}/infill", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_reused_prompts_give_the_results_of_cold_runs_across_the_window(server):
    """An editor typing at the cursor of a file longer than the shipped model's 512-token window: every request
    reuses the start of the one before, and answers exactly what a cold run answers."""
    long_prefix = "".join(f"def helper_{i}(value):\n    return value * {i} + {i % 7}\n\n\n" for i in range(60))
    typed = "def total(values):\n    result = sum(v for v in val"
    reused = []
    for n in range(len(typed) - 8, len(typed) + 1):
        prefix = long_prefix + typed[:n]
        warm = _infill(server.url, prefix, "\n\n\nprint(total([1]))\n")
        cold = _infill(server.url, prefix, "\n\n\nprint(total([1]))\n", reuse=False)
        assert warm["content"] == cold["content"]
        assert warm["tokens_evaluated"] > 512  # the prompt is longer than the window
        assert cold["timings"]["cache_n"] == 0
        reused.append(warm["timings"]["cache_n"])
    # (after the first, each warm request follows a cold one of a prompt it shares all but the end with)
    assert reused[0] == 0 and all(r >= 512 for r in reused[1:]), reused


def test_the_server_reuses_the_prompt_of_the_keystroke_before(server):
    prefix = FILE[: FILE.index("values[key")]
    suffix = FILE[FILE.index("values[key"):]
    first = _infill(server.url, prefix, suffix)
    second = _infill(server.url, prefix + "v", suffix)
    assert second["timings"]["cache_n"] >= first["tokens_evaluated"] - len(suffix)  # everything before the edit
    assert second["timings"]["prompt_n"] == second["tokens_evaluated"] - second["timings"]["cache_n"]


def test_server_output_equals_local_output(server, home, tmp_path):
    source = tmp_path / "config_reader.py"
    source.write_text(FILE)
    line = FILE.splitlines().index("    values = {}") + 1
    for args in (["infill", str(source), "--line", str(line), "--json"],
                 ["infill", str(source), "--line", str(line + 1), "--column", "5", "--json", "-n", "2", "--seed", "3"],
                 ["complete", "def parse_args(argv):", "--json", "--max-new-tokens", "40"]):
        local = run_sc2(args + ["--dtype", "float32"], home)
        remote = run_sc2(args, home, SC2_SERVER=server.url)
        assert local.returncode == remote.returncode == 0, (local.stderr, remote.stderr)
        local_json, remote_json = _comparable(local.stdout), _comparable(remote.stdout)
        if "--seed" in args:  # sampled: the same seed gives the same candidates
            assert local_json["candidates"] == remote_json["candidates"]
        else:
            assert local_json == remote_json


def _comparable(stdout: bytes) -> dict:
    """A --json result without what may differ between runs: a greedy run's random seed, timings, and float32
    log-probabilities beyond 1e-5 (the server's cache layout sums in another order)."""
    result = json.loads(stdout)
    result.pop("timings", None)
    if result.pop("seed") is not None:
        for row in result.get("candidates", []) + result.get("choices", []):
            for key in ("mean_logprob", "logprob"):
                if key in row:
                    row[key] = round(row[key], 5)
    return result


def test_server_writes_the_file_as_the_local_run_does(server, home, tmp_path):
    local_file, remote_file = tmp_path / "local.py", tmp_path / "remote.py"
    local_file.write_text(FILE)
    remote_file.write_text(FILE)
    line = str(FILE.splitlines().index("def main():") + 2)
    local = run_sc2(["infill", str(local_file), "--line", line, "--write", "--force", "--dtype", "float32"], home)
    remote = run_sc2(["infill", str(remote_file), "--line", line, "--write", "--force", "--server", server.url], home)
    assert local.returncode == remote.returncode == 0, (local.stderr, remote.stderr)
    assert local_file.read_bytes() == remote_file.read_bytes() != FILE.encode()


def test_the_client_never_imports_torch(server, home):
    blocked = ("import sys; sys.modules['torch'] = None; from sc2cli.cli import main; "
               "main(['complete', 'def f(x):', '--max-new-tokens', '8', '--server', sys.argv[1]])")
    result = subprocess.run([sys.executable, "-c", blocked, server.url], capture_output=True, timeout=60,
                            env=isolated_env(home))
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.strip()


def test_server_errors_read_as_the_commands_own(server, home, tmp_path):
    source = tmp_path / "app.py"
    source.write_text(FILE)
    args = ["infill", str(source), "--line", "3", "--max-new-tokens", "2045"]
    local, remote = run_sc2(args, home), run_sc2(args + ["--server", server.url], home)
    assert local.returncode == remote.returncode == 2
    assert remote.stderr == local.stderr
    assert remote.stderr.decode().startswith("sc2: error: --max-new-tokens: generating 2045 tokens")
    unreachable = run_sc2(["complete", "x", "--server", "http://127.0.0.1:9"], home)
    assert unreachable.returncode == 1 and b"cannot reach the server" in unreachable.stderr
    local_only = run_sc2(["complete", "x", "--device", "cpu", "--server", server.url], home)
    assert local_only.returncode == 2 and b"--device does not apply with --server" in local_only.stderr


def _long_stream(url: str) -> httpx.Response:
    # (free mode: a block-mode scope would end it where the model leaves the function, long before 1,500 tokens)
    body = {"prompt": "def f(x):", "mode": "free", "job": {"max_new_tokens": 1500, "ignore_eos": True,
                                                          "decode": "eager"}, "stream": True}
    return httpx.Client(timeout=60).send(httpx.Client().build_request("POST", f"{url}/sc2/v1/complete", json=body),
                                         stream=True)


def test_a_client_that_leaves_frees_its_slot_at_once(home):
    """One slot and no queue: while a long generation runs, another request gets 503; once its client closes the
    connection, the slot is free again within a step or two (not after the 1,500 tokens)."""
    with running_server(home / "one-slot", "--parallel", "1", "--queue", "0") as one:
        response = _long_stream(one.url)
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")  # generating
        busy = httpx.post(f"{one.url}/completion", json={"prompt": "x", "n_predict": 2}, timeout=30)
        assert busy.status_code == 503 and busy.headers["retry-after"]
        response.close()
        deadline = time.monotonic() + 5
        while True:
            reply = httpx.post(f"{one.url}/completion", json={"prompt": "x", "n_predict": 2}, timeout=30)
            if reply.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert reply.status_code == 200, reply.text
        assert "new=1500" not in one.log()


def test_a_burst_gets_200_or_503_and_leaves_no_slot_busy(server):
    def ask(i: int) -> int:
        body = {"input_prefix": f"def f{i}(x):\n    return ", "input_suffix": "\n", "n_predict": 8}
        return httpx.post(f"{server.url}/infill", json=body, timeout=120).status_code

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        codes = list(pool.map(ask, range(50)))
    assert set(codes) <= {200, 503} and 200 in codes, codes
    assert 503 in codes  # 50 at once cannot all fit 2 slots and a queue of 4
    assert httpx.get(f"{server.url}/health", timeout=10).json() == {"status": "ok"}
    with concurrent.futures.ThreadPoolExecutor(6) as pool:  # every slot and queue place is free again
        assert list(pool.map(ask, range(6))) == [200] * 6


def test_sigterm_ends_the_requests_in_flight_and_exits_0(home):
    with running_server(home / "sigterm") as server:
        response = _long_stream(server.url)
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        events = [line for line in lines if line.startswith("data: ")]
        assert json.loads(events[-1][6:])["result"]["completions"][0]["finish_reason"] == "length"
        assert server.stop() == 0
        assert time.monotonic() - started < 10
        assert "Traceback" not in server.log()


def test_t_max_predict_ms_ends_at_a_line_break_with_the_text(server):
    reply = _infill(server.url, "def f(x):\n", "", n_predict=400, t_max_predict_ms=1, mode="block")
    assert reply["stop_type"] == "limit"
    assert reply["tokens_predicted"] < 400


def test_serve_without_its_extra_says_what_to_install(home):
    blocked = "import sys; sys.modules['uvicorn'] = None; from sc2cli.cli import main; main(['serve'])"
    result = subprocess.run([sys.executable, "-c", blocked], capture_output=True, timeout=60, env=isolated_env(home))
    assert result.returncode == 1
    assert result.stderr.decode().strip() == "sc2: error: sc2 serve needs Starlette and uvicorn: pip install " \
                                             "'sc2cli[serve]'"


def test_a_taken_port_is_one_line(server, home):
    port = server.url.rsplit(":", 1)[1]
    result = run_sc2(["serve", "--port", port], home, timeout=60)
    assert result.returncode == 1
    assert result.stderr.decode().strip() == f"sc2: error: port {port} on 127.0.0.1 is taken: another server " \
                                             "runs there (use --port)"
