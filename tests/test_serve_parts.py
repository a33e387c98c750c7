"""The parts of `sc2 serve` that need no model process: llama.cpp's stop rules (n_indent, t_max_predict_ms),
fair turns and slot choice for concurrent runs, a tokenizer shared by request threads, and the loading state over
real HTTP."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time

import httpx
import pytest

from sc2cli.backends.sharing import SlotPool, Turns
from sc2cli.generation.stopping import IndentStop, TimeLimit
from serving import free_port


def _feed(stop, pieces):
    out, stopped = "", False
    for piece in pieces:
        text, stopped = stop.feed(piece)
        out += text
        if stopped:
            break
    return out, stopped


def test_n_indent_ends_at_a_line_that_starts_left_of_the_cursor():
    text = "x + 1\n    y = 2\n  z = 3\n"
    assert _feed(IndentStop(4), [text]) == ("x + 1\n    y = 2\n  ", True)  # the short indent itself stays
    assert _feed(IndentStop(4), list(text)) == ("x + 1\n    y = 2\n  ", True)  # piece by piece, the same
    assert _feed(IndentStop(4), ["a\n    b\n\n    c"]) == ("a\n    b\n", True)  # a blank line ends it too
    assert _feed(IndentStop(4), ["\tif x:\n\t\t\t\treturn 1"]) == ("\tif x:\n\t\t\t\treturn 1", False)
    assert _feed(IndentStop(0), ["a\nb\n"]) == ("a\nb\n", False)  # (0: off, as in llama.cpp)


def test_t_max_predict_ms_ends_only_at_a_line_break_once_the_time_is_up():
    now = [0.0]
    limit = TimeLimit(0.5, at_line_break=True, clock=lambda: now[0])
    assert limit.feed("a") == ("a", False)
    now[0] = 1.0
    assert limit.feed("bc") == ("bc", False)  # late, but no line break in it
    assert limit.feed("d\n") == ("d\n", True)  # the line break is kept
    assert limit.feed("e") == ("", True)
    anywhere = TimeLimit(0.5, clock=lambda: now[0])
    anywhere.feed("a")
    now[0] = 2.0
    assert anywhere.feed("b") == ("b", True)


def test_turns_let_runs_compute_one_step_each_in_turn():
    turns, order = Turns(), []
    steps_each = 5

    def steps(name: str) -> None:
        for _ in range(steps_each):
            order.append(name)
            turns.pass_on()

    def run_b() -> None:
        with turns.held():
            steps("b")

    with turns.held():
        b = threading.Thread(target=run_b)
        b.start()
        deadline = time.monotonic() + 5
        while not turns.waiting and time.monotonic() < deadline:  # b asks while a computes
            time.sleep(0.001)
        steps("a")
    b.join(10)
    assert order == ["a", "b"] * steps_each  # one step each, in turn


class _Model:
    """What a SlotPool reads of a model."""

    class config:
        max_position_embeddings, sliding_window, num_hidden_layers, num_key_value_heads, head_size = 64, 16, 1, 1, 2

    dtype, device = None, "cpu"


def test_a_request_takes_the_free_slot_that_shares_the_longest_start():
    import torch

    _Model.dtype = torch.float32
    pool = SlotPool(_Model(), 2, reserve=8)
    first, second = pool.slots
    first.tokens, second.tokens = [1, 2, 3, 4], [1, 2, 9]
    with pool.acquire([1, 2, 3, 4, 5]) as slot:
        assert slot is first
        with pool.acquire([1, 2, 3, 4, 5]) as other:  # the best one is busy: the other free one
            assert other is second
        assert pool.busy == 1
    with pool.acquire([7, 8]) as slot:  # nothing shared: the one used least recently (released first above)
        assert slot is second


def test_a_request_waits_for_a_free_slot():
    import torch

    _Model.dtype = torch.float32
    pool = SlotPool(_Model(), 1, reserve=8)
    got = threading.Event()

    def wait_for_slot() -> None:
        with pool.acquire([1]):
            got.set()

    with pool.acquire([1]):
        waiting = threading.Thread(target=wait_for_slot)
        waiting.start()
        assert not got.wait(0.2)
    assert got.wait(5)
    waiting.join(5)


def test_encoding_from_many_threads_at_once_gives_the_same_ids(shipped_tokenizer):
    text = "<fim_prefix>def f(x):\n    return x<fim_suffix>\n<fim_middle>"
    literal, parsed = shipped_tokenizer.encode_text(text), shipped_tokenizer.encode(text)
    assert literal != parsed

    def encode(i: int):
        return shipped_tokenizer.encode_text(text) if i % 2 else shipped_tokenizer.encode(text)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(encode, range(2000)))
    assert all(r == (literal if i % 2 else parsed) for i, r in enumerate(results))


@pytest.fixture(scope="module")
def shipped_tokenizer():
    from sc2cli.hub import resolve
    from sc2cli.tokenizer import Tokenizer

    return Tokenizer.from_dir(resolve("sc2-tiny"))


def test_while_the_model_loads_every_route_says_503_in_its_own_shape():
    """Real HTTP on the loopback address, against a server whose model has not loaded (yet)."""
    import uvicorn

    from sc2cli.serve.app import build_app
    from sc2cli.serve.service import Service

    service = Service("starcoder2-test")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(build_app(service), host="127.0.0.1", port=port, log_level="error",
                                           lifespan="off"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        health = httpx.get(f"{url}/health", timeout=5)
        assert health.status_code == 503
        assert health.json() == {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}
        infill = httpx.post(f"{url}/infill", json={"input_prefix": "a", "input_suffix": ""}, timeout=5)
        assert infill.status_code == 503 and infill.headers["retry-after"] and "Loading" in infill.text
        openai = httpx.post(f"{url}/v1/completions", json={"prompt": "a"}, timeout=5)
        assert openai.status_code == 503 and openai.json()["error"]["message"] == "Loading model"
        ollama = httpx.post(f"{url}/api/generate", json={"model": "starcoder2-test", "prompt": "a"}, timeout=5)
        assert ollama.status_code == 503 and ollama.json() == {"error": "Loading model"}
    finally:
        server.should_exit = True
        thread.join(10)
        service.shutdown()
