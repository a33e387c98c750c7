"""`sc2 complete|infill --server URL --backend openai`: sc2 builds the prompt, a remote OpenAI-compatible engine
generates, and the middle filters, stops and ranking run here. Against a real `sc2 serve` (token ids in
/v1/completions) the greedy results equal the local ones on held-out files; a file that spells `<file_sep>` stays
text; a filter that ends a row closes its stream; a server of another model is refused in one line; the client
never imports torch. Against a stand-in server: what is sent, the refusal of text-only servers for such files, and
the early close of an endless stream. Against `python -m llama_cpp.server` on the exported GGUF where
llama-cpp-python is installed."""

from __future__ import annotations

import contextlib
import http.server
import importlib.util
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from cli_helpers import assert_one_line_error, isolated_env, run_sc2
from serving import free_port, running_server

pytestmark = pytest.mark.slow

MAX_NEW = 32  # (bounded: each case runs the model twice on 2 cores)
FILE_SEP_SOURCE = '''"""Splits a repository dump on its markers."""

SEP = "<file_sep>"
PREFIX = "<fim_prefix>"


def split_files(dump):
    """Return the files of a dump written with SEP between them."""
    parts = dump.split(SEP)

    return [part.strip() for part in parts if part.strip()]
'''
BLOCK_SOURCE = '''import os


def read_config(path):
    """Read a key = value file into a dict."""
    values = {}


def main():
    config = read_config(os.environ.get("CONFIG", "app.cfg"))
    print(config)
'''


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("remote-backend")


@pytest.fixture(scope="module")
def server(home):
    """float32: the project's correctness contract (greedy tokens equal) is stated in float32."""
    with running_server(home / "serve", "--dtype", "float32") as s:
        yield s


@pytest.fixture(scope="module")
def tasks():
    """Held-out cursor positions in real files (the standard library's held-out split, as `sc2 bench infill`)."""
    from sc2cli.bench.infill import infill_tasks

    return infill_tasks(None, per_file=1, limit=3, seed=0)[0]


def _task_file(folder: Path, task, index: int) -> tuple[Path, list[str]]:
    """The task's file with its target line blanked (block mode) or cut at its middle (line mode); the args."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / Path(task.path).name
    if index % 2:
        kept = task.target[: len(task.target) // 2]
        args = ["--mode", "line"]
    else:
        kept, args = "", []
    path.write_text(task.prefix + kept + "\n" + task.suffix)
    return path, ["--line", str(task.line), *args]


def _json(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout)


def _comparable_infill(result: subprocess.CompletedProcess) -> dict:
    """What must equal: everything but the model's name, the seed and the log-probabilities (sc2 serve's stream
    carries none; the ranking of a greedy run has one candidate)."""
    data = _json(result)
    data.pop("model")
    data.pop("seed")
    for candidate in data["candidates"]:
        candidate.pop("mean_logprob")
    return data


def _remote(home: Path, args: list[str], url: str, **env) -> subprocess.CompletedProcess:
    return run_sc2(args + ["--server", url, "--backend", "openai"], home, **env)


@pytest.mark.parametrize("index", range(3))
def test_infill_on_sc2_serve_equals_the_local_run(server, home, tmp_path, tasks, index):
    path, cursor = _task_file(tmp_path, tasks[index], index)
    args = ["infill", str(path), *cursor, "--max-new-tokens", str(MAX_NEW), "--json"]
    local = _comparable_infill(run_sc2(args + ["--dtype", "float32"], home))
    remote = _comparable_infill(_remote(home, args, server.url))
    assert remote == local


def test_complete_on_sc2_serve_equals_the_local_run(server, home):
    # The second prompt ends in whitespace: the local engine heals it, the remote row has it cut (see generate).
    for prompt in ("def parse_args(argv):", "class Point:\n    def __init__(self, x, y):\n        "):
        args = ["complete", prompt, "--max-new-tokens", str(MAX_NEW), "--json"]
        local = _json(run_sc2(args + ["--dtype", "float32"], home))
        remote = _json(_remote(home, args, server.url, SC2_BACKEND="openai"))
        pick = lambda data: [(c["text"], c["finish_reason"]) for c in data["choices"]]  # noqa: E731
        assert pick(remote) == pick(local) and remote["usage"]["prompt_tokens"] == local["usage"]["prompt_tokens"]


def test_a_file_that_spells_file_sep_is_sent_as_ids_and_completes_as_locally(server, home, tmp_path):
    path = tmp_path / "split.py"
    path.write_text(FILE_SEP_SOURCE)
    args = ["infill", str(path), "--line", str(FILE_SEP_SOURCE.splitlines().index("    parts = dump.split(SEP)") + 2),
            "--max-new-tokens", str(MAX_NEW), "--json"]
    local = _comparable_infill(run_sc2(args + ["--dtype", "float32"], home))
    assert _comparable_infill(_remote(home, args, server.url)) == local
    # The ids sent keep the file's `<file_sep>` as text: the prompt holds the marker's id only where sc2 put it.
    dry = _json(_remote(home, args[:-1] + ["--dry-run", "--json"], server.url))
    from sc2cli.hub import resolve
    from sc2cli.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_dir(resolve("sc2-tiny"))
    assert dry["prompt"].count("<file_sep>") == 1 and tokenizer.token_id("<file_sep>") not in dry["ids"]
    assert dry["prompt"].count("<fim_prefix>") == 2 and dry["ids"].count(tokenizer.token_id("<fim_prefix>")) == 1


def test_a_filter_that_ends_the_middle_closes_the_stream(server, home, tmp_path):
    """Block mode ends the middle at the first line that leaves the block; the server, which would go on to the
    limit, stops there too: its log line of the request counts fewer new tokens than a run to the end makes."""
    path = tmp_path / "config.py"
    path.write_text(BLOCK_SOURCE)
    limit = 256
    args = ["infill", str(path), "--line", "6", "--mode", "block", "--max-new-tokens", str(limit), "--json"]
    before = server.log().count("POST /v1/completions")
    remote = _json(_remote(home, args, server.url))
    assert remote["finish_reason"] == "stop" and remote["middle"]
    deadline = time.monotonic() + 10
    while server.log().count("POST /v1/completions") == before and time.monotonic() < deadline:
        time.sleep(0.05)
    line = [line for line in server.log().splitlines() if line.startswith("POST /v1/completions")][-1]
    made = int(line.split(" new=")[1].split()[0])
    ids = _json(run_sc2(args[:-1] + ["--dry-run", "--json"], home))["ids"]
    whole = httpx.post(f"{server.url}/v1/completions", json={"prompt": ids, "max_tokens": limit, "temperature": 0},
                       timeout=300).json()
    assert whole["choices"][0]["text"].startswith(remote["middle"])
    assert made < whole["usage"]["completion_tokens"], (line, whole["usage"])


def test_sc2_serve_runs_token_ids_as_they_are(server):
    from sc2cli.hub import resolve
    from sc2cli.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_dir(resolve("sc2-tiny"))
    ids = tokenizer.encode_text('SEP = "<file_sep>"\ndef split(dump):\n    return dump.split(SEP)\n')
    body = {"prompt": ids, "max_tokens": 8, "temperature": 0}
    by_ids = httpx.post(f"{server.url}/v1/completions", json=body, timeout=120)
    nested = httpx.post(f"{server.url}/v1/completions", json=body | {"prompt": [ids]}, timeout=120)
    assert by_ids.status_code == nested.status_code == 200, by_ids.text
    assert by_ids.json()["usage"]["prompt_tokens"] == len(ids)
    assert by_ids.json()["choices"][0]["text"] == nested.json()["choices"][0]["text"]
    for bad, param in (({"prompt": [1, 10**6]}, "prompt"), ({"prompt": [1, True]}, "prompt"),
                       ({"prompt": ids, "suffix": ""}, "suffix"), ({"prompt": []}, "prompt")):
        refused = httpx.post(f"{server.url}/v1/completions", json={"max_tokens": 4} | bad, timeout=30)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == param, refused.text


def test_a_model_of_another_vocabulary_is_refused_in_one_line(server, home, tmp_path):
    from checkpoints import make_checkpoint

    other = make_checkpoint(tmp_path / "other")
    path = tmp_path / "app.py"
    path.write_text(BLOCK_SOURCE)
    result = _remote(home, ["infill", str(path), "--line", "6", "--model", str(other)], server.url)
    assert_one_line_error(result, 2, "--model", "tokens in its vocabulary", "pass the --model the server runs")
    unreachable = run_sc2(["complete", "x", "--server", "http://127.0.0.1:9", "--backend", "openai"], home)
    assert_one_line_error(unreachable, 1, "cannot reach the server")
    placed = _remote(home, ["complete", "x", "--device", "cpu"], server.url)
    assert_one_line_error(placed, 2, "--device does not apply with --server")
    assert_one_line_error(run_sc2(["complete", "x", "--backend", "openai"], home), 2, "needs --server")
    assert_one_line_error(_remote(home, ["complete", "x", "--decode", "eager"], server.url), 2, "--decode")


def test_the_client_never_imports_torch(server, home, tmp_path):
    path = tmp_path / "app.py"
    path.write_text(BLOCK_SOURCE)
    for args in (["complete", "def f(x):", "--max-new-tokens", "8"],
                 ["infill", str(path), "--line", "6", "--max-new-tokens", "8"]):
        blocked = ("import sys; sys.modules['torch'] = None; from sc2cli.cli import main; "
                   "main(sys.argv[2:] + ['--server', sys.argv[1], '--backend', 'openai'])")
        result = subprocess.run([sys.executable, "-c", blocked, server.url, *args], capture_output=True, timeout=120,
                                env=isolated_env(home))
        assert result.returncode == 0, result.stderr.decode()
        assert result.stdout.strip()


# ---- a stand-in server: what goes over the wire ---------------------------------------------------------------


class StandIn(http.server.ThreadingHTTPServer):
    """An OpenAI-compatible server that records the requests and streams `lines` (then, with `endless`, the same
    line until the client leaves); `text_only` refuses token ids as llama-cpp-python does (422)."""

    daemon_threads = True

    def __init__(self, lines: list[str], endless: bool = False, text_only: bool = False, models: dict | None = None):
        super().__init__(("127.0.0.1", 0), StandInHandler)
        self.lines, self.endless, self.text_only = lines, endless, text_only
        self.models = models if models is not None else {"object": "list", "data": [{"id": "stand-in"}]}
        self.bodies: list[dict] = []
        self.left_after: float | None = None  # seconds the stream ran before the client left

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class StandInHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._reply(200, self.server.models) if self.path == "/v1/models" else self._reply(404, {"detail": "no"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/completions":
            return self._reply(404, {"detail": "Not Found"})
        self.server.bodies.append(body)
        if self.server.text_only and not isinstance(body["prompt"], str):
            return self._reply(422, {"detail": [{"loc": ["body", "prompt"], "msg": "Input should be a valid string"}]})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        started = time.monotonic()

        def event(text: str, reason=None) -> None:
            chunk = {"choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": reason}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()

        try:
            for line in self.server.lines:
                event(line)
            while self.server.endless and time.monotonic() - started < 30:
                event(self.server.lines[-1])
                time.sleep(0.01)
            event("", "length")
            self.wfile.write(b"data: [DONE]\n\n")
        except OSError:
            self.server.left_after = time.monotonic() - started


@contextlib.contextmanager
def stand_in(*args, **kwargs):
    server = StandIn(*args, **kwargs)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _backend(url: str):
    from sc2cli.backends.openai_remote import OpenAIBackend
    from sc2cli.checkpoint import open_checkpoint

    return OpenAIBackend.connect(url, open_checkpoint("sc2-tiny", weights=False), model_given=False)


def _request(source: str, line: int, **options):
    from sc2cli.backends.base import GenerationJob
    from sc2cli.fim.pipeline import InfillRequest

    return InfillRequest.from_file(source.encode(), line=line, path="app.py", job=GenerationJob(max_new_tokens=64),
                                   **options)


def test_what_is_sent_and_an_endless_stream_closed_by_the_block_filter():
    from sc2cli.fim.pipeline import fill, plan

    body_lines = ["\n", "    values['a'] = 1\n", "    return values\n", "\n", "\n", "def other():\n", "    pass\n"]
    with stand_in(body_lines, endless=True) as server:
        backend = _backend(server.url)
        request = _request(BLOCK_SOURCE, 6, mode="block")
        started = time.monotonic()
        result = fill(request, backend)
        assert time.monotonic() - started < 10
        deadline = time.monotonic() + 5
        while server.left_after is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.left_after is not None and server.left_after < 10  # the client left: the stream was cut
    assert result.best.middle == "\n    values['a'] = 1\n    return values" and result.best.finish_reason == "stop"
    body = server.bodies[0]
    ids = plan(request, backend.tokenizer, backend.config).prompt.ids
    assert body["prompt"] == ids and body["stream"] is True and body["n"] == 1 and body["model"] == "stand-in"
    assert body["max_tokens"] == 64 and body["temperature"] == 0.0 and body["repeat_penalty"] == 1.0
    assert backend.tokenizer.token_id("<file_sep>") in body["stop_token_ids"]
    assert any("does not say its context size" in note for note in backend.notes)


def test_a_text_only_server_gets_text_unless_the_file_spells_a_special_token():
    from sc2cli.errors import InputError
    from sc2cli.fim.pipeline import fill, plan

    with stand_in(["    return values\n"], text_only=True) as server:
        backend = _backend(server.url)
        request = _request(BLOCK_SOURCE, 6)
        fill(request, backend)
        assert isinstance(server.bodies[0]["prompt"], list)  # ids first, refused
        assert server.bodies[1]["prompt"] == backend.tokenizer.decode(plan(request, backend.tokenizer,
                                                                            backend.config).prompt.ids)
        sent = len(server.bodies)
        with pytest.raises(InputError, match="takes prompts only as text") as refused:
            fill(_request(FILE_SEP_SOURCE, 9), backend)
        assert "<file_sep>" in str(refused.value) and "<fim_prefix>" in str(refused.value)
        assert len(server.bodies) == sent  # nothing was sent as text


def test_a_server_that_reports_another_model_is_refused():
    from sc2cli.errors import InputError

    for meta, needle in (({"n_vocab": 49152, "n_ctx_train": 2048}, "49152 tokens in its vocabulary"),
                         ({"n_vocab": 8192, "n_ctx_train": 16384}, "16384-token context")):
        with stand_in([], models={"data": [{"id": "other", "meta": meta}]}) as server:
            with pytest.raises(InputError, match=needle) as refused:
                _backend(server.url)
            assert "pass --model" in str(refused.value)
    with stand_in([], models={"data": [{"id": "vllm", "max_model_len": 16384}]}) as server:
        with pytest.raises(InputError, match="16384-token context"):
            _backend(server.url)
    with stand_in([], models={"data": [{"id": "vllm", "max_model_len": 1024}]}) as server:
        assert _backend(server.url).config.max_position_embeddings == 1024


# ---- llama.cpp (llama-cpp-python's server) on the exported GGUF --------------------------------------------------

needs_llama_cpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installed (pip install 'llama-cpp-python[server]')")
# Short files: llama.cpp's starcoder2 does not apply the sliding window (512 for sc2-tiny), so prompt and middle
# stay within it for the same tokens.
SHORT_FILES = [
    ('def mean(values):\n    """The arithmetic mean."""\n    total = 0\n\n    return total / len(values)\n', 4),
    ("import os\n\n\ndef home():\n    path = os.path.expanduser('~')\n    \n", 6),
    ("class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n\n", 6),
]


@pytest.fixture(scope="module")
def llama_server(home):
    gguf_path = home / "sc2-tiny-f32.gguf"
    exported = run_sc2(["export", "gguf", "sc2-tiny", str(gguf_path), "--type", "f32"], home)
    assert exported.returncode == 0, exported.stderr.decode()
    port = free_port()
    log_path = home / "llama-cpp-server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path),
                                    "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
                                    "--n_threads", "2"], stdout=log, stderr=log, env=isolated_env(home))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, log_path.read_text(errors="replace")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")
            time.sleep(0.2)
        yield url
    finally:
        process.kill()
        process.wait()


@needs_llama_cpp
@pytest.mark.parametrize("index", range(len(SHORT_FILES)))
def test_infill_on_llama_cpp_equals_the_local_run(llama_server, home, tmp_path, index):
    source, line = SHORT_FILES[index]
    path = tmp_path / "short.py"
    path.write_text(source)
    args = ["infill", str(path), "--line", str(line), "--max-new-tokens", str(MAX_NEW), "--json"]
    local = _comparable_infill(run_sc2(args + ["--dtype", "float32"], home))
    remote = _remote(home, args, llama_server)
    assert b"does not say its context size" in remote.stderr  # (llama-cpp-python's /v1/models says none)
    assert _comparable_infill(remote) == local


@needs_llama_cpp
def test_llama_cpp_takes_text_only_so_a_file_that_spells_file_sep_is_refused(llama_server, home, tmp_path):
    path = tmp_path / "split.py"
    path.write_text(FILE_SEP_SOURCE)
    result = _remote(home, ["infill", str(path), "--line", "9", "--max-new-tokens", "8"], llama_server)
    stderr = result.stderr.decode()
    assert result.returncode == 2 and "Traceback" not in stderr
    warning, error = stderr.strip().splitlines()  # (llama-cpp-python names no context size: a warning says so)
    assert "does not say its context size" in warning
    assert "takes prompts only as text" in error and "<file_sep>" in error


HELD_OUT_TASKS = 24
HELD_OUT_NEW = 24
TIE = 1e-3  # a top-two logit gap below this fraction of the largest logit is a tie either engine may break


@pytest.fixture(scope="module")
def windowed_backends(llama_server):
    """sc2's float32 engine here and llama.cpp's server, both given the config with its context cut to the sliding
    window: prompt and middle then fit the window, the only span where llama.cpp's starcoder2 (which applies no
    window) computes what sc2 does."""
    import copy

    from sc2cli.backends.local import LocalBackend
    from sc2cli.backends.openai_remote import OpenAIBackend
    from sc2cli.checkpoint import load, open_checkpoint

    local = LocalBackend(load("sc2-tiny", dtype="float32"))
    remote = OpenAIBackend.connect(llama_server, open_checkpoint("sc2-tiny", weights=False), model_given=True)
    windowed = copy.copy(local.config)
    windowed.max_position_embeddings = windowed.sliding_window
    return local, remote, windowed


def _gap_at_divergence(local, prompt_ids: list[int], ours: list[int], theirs: list[int]) -> float:
    """The gap between the two engines' choices at the first token where they differ, as a fraction of the largest
    logit there, by sc2's float32 logits."""
    import torch

    at = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
    ids = torch.tensor([prompt_ids + ours[:at]])
    with torch.inference_mode():
        logits = local.model(ids).logits[0, -1]
    return float((logits[ours[at]] - logits[theirs[at]]).abs() / logits.abs().max())


@needs_llama_cpp
def test_held_out_infill_tasks_on_llama_cpp_give_the_local_middles(windowed_backends, capsys):
    """Greedy infill of held-out standard-library lines (as `sc2 bench infill` picks them; line and block mode in
    turn): the middle llama.cpp's server makes from sc2's prompt is the one sc2 makes here, except where the two
    first tokens that differ are tied in sc2's own logits."""
    from sc2cli.backends.base import GenerationJob
    from sc2cli.bench.infill import infill_tasks
    from sc2cli.fim.pipeline import InfillRequest, fill, plan
    from sc2cli.generation.sampling import SamplingParams

    local, remote, windowed = windowed_backends
    tasks = infill_tasks(None, per_file=1, limit=HELD_OUT_TASKS, seed=1)[0]
    assert len(tasks) == HELD_OUT_TASKS
    job = GenerationJob(sampling=SamplingParams(temperature=0.0), max_new_tokens=HELD_OUT_NEW)
    same, ties, prompt_tokens = 0, [], []
    for index, task in enumerate(tasks):
        kept, mode = (task.target[: len(task.target) // 2], "line") if index % 2 else ("", "block")
        request = InfillRequest.from_text(task.prefix + kept, "\n" + task.suffix, path=task.path, mode=mode, job=job)
        planned = plan(request, local.tokenizer, windowed)
        prompt_tokens.append(len(planned.prompt.ids))
        ours, theirs = fill(request, local, planned=planned).best, fill(request, remote, planned=planned).best
        if ours.middle == theirs.middle:
            same += 1
            continue
        gap = _gap_at_divergence(local, list(planned.prompt.ids), ours.tokens, theirs.tokens)
        assert gap < TIE, (task.path, task.line, ours.middle, theirs.middle, gap)
        ties.append(gap)
    with capsys.disabled():
        print(f"\nllama.cpp's server vs sc2 float32 on {len(tasks)} held-out infill tasks: {same} middles equal, "
              f"{len(ties)} differ at a tie; prompts of {min(prompt_tokens)}-{max(prompt_tokens)} tokens")
    assert same >= len(tasks) - 2  # ties are rare: more would say the engines compute differently
