"""`sc2 serve` on the wire: a real server process on the loopback address, spoken to by the clients editors use
(the official `openai` and `ollama` Python clients, and plain HTTP for llama.cpp's /infill as llama.vim and
llama.vscode send it). The shipped model is weak, so these check shapes, types, consistency and determinism,
never the quality of a completion."""

from __future__ import annotations

import http.client
import json
import math
import re
import threading

import httpx
import ollama
import openai
import pytest
from cli_helpers import assert_one_line_error, run_sc2
from safetensors import safe_open
from serving import free_port, running_server

from sc2cli.hub import shipped_model_dir
from sc2cli.tokenizer import Tokenizer

pytestmark = pytest.mark.slow

TIMEOUT = 60  # seconds, for every client call: a hung server fails the test instead of the run
MODEL = "starcoder2-sc2-tiny"  # the id `sc2 serve` gives the shipped model
N = 16  # tokens per request: enough to see shapes, cheap on two cores
PARALLEL = 3  # llama.vscode asks for n_cmpl 3
KEY = "secret"
SMALL_BODY = 2048
CONTEXT = 2048  # the shipped model's

PREFIX = "def add(a, b):\n    return"  # (one the shipped model fills with some text, so comparisons say something)
SUFFIX = "\n\nprint(add(1, 2))\n"
TOO_LONG = "x = 1\n" * 3000  # ~15,000 tokens: far past the context

# Which protocol's error shape each route answers in (sc2's own: llama.cpp's, with the field at fault in "param").
PROTOCOL = {"/": "ollama", "/infill": "llama.cpp", "/completion": "llama.cpp", "/health": "llama.cpp",
            "/sc2/v1/infill": "sc2", "/sc2/v1/complete": "sc2",
            "/v1/completions": "openai", "/v1/models": "openai",
            "/api/generate": "ollama", "/api/show": "ollama"}
ERROR_KEYS = {"llama.cpp": {"code", "message", "type"}, "sc2": {"code", "message", "type", "param"},
              "openai": {"message", "type", "param", "code"}}
GENERATING = ("/infill", "/completion", "/v1/completions", "/api/generate", "/api/show", "/sc2/v1/infill",
              "/sc2/v1/complete")

# llama.vim's /infill body (spec §2), n_predict lowered; it always sends `model` and an empty bearer key.
LLAMA_VIM_FIELDS = ["content", "timings/prompt_n", "timings/prompt_ms", "timings/prompt_per_token_ms",
                    "timings/prompt_per_second", "timings/predicted_n", "timings/predicted_ms",
                    "timings/predicted_per_token_ms", "timings/predicted_per_second", "truncated", "tokens_cached"]
RING = [{"text": "def sub(a, b):\n    return a - b\n", "time": [1738000000, 123456], "filename": "src/ops.py"}]
LLAMA_VIM = {"id_slot": 0, "input_prefix": "def add(a, b):\n", "input_suffix": "\n\nprint(add(1, 2))\n",
             "input_extra": RING, "prompt": "    ", "n_predict": N, "stop": [], "n_indent": 4, "top_k": 40,
             "top_p": 0.90, "samplers": ["top_k", "top_p", "infill"], "stream": False, "cache_prompt": True,
             "t_max_prompt_ms": 500, "t_max_predict_ms": 250, "response_fields": LLAMA_VIM_FIELDS, "model": ""}
LLAMA_VIM_WARM_UP = {"id_slot": 0, "input_prefix": "", "input_suffix": "", "input_extra": RING, "prompt": "",
                     "n_predict": 0, "temperature": 0.0, "samplers": [], "stream": False, "cache_prompt": True,
                     "t_max_prompt_ms": 1, "t_max_predict_ms": 1, "response_fields": [""], "model": ""}
LLAMA_VSCODE = {"id_slot": 0, "input_prefix": "def add(a, b):\n", "input_suffix": "\n",
                "input_extra": [{"text": "x = 1\n", "time": 1738000000123, "filename": "a.py"}], "prompt": "    ",
                "n_predict": N, "n_cmpl": PARALLEL, "top_k": 40, "top_p": 0.99, "stream": False,
                "samplers": ["top_k", "top_p", "infill"], "cache_prompt": True, "t_max_prompt_ms": 500,
                "t_max_predict_ms": 500}
LLAMA_VSCODE_TIMINGS = ("prompt_n", "prompt_ms", "prompt_per_second", "predicted_n", "predicted_ms",
                        "predicted_per_second")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """float32, as every test that compares greedy outputs: in bf16 a prompt evaluated after a reused prefix goes
    through another attention kernel than the whole prompt, and its rounding can flip a near tie."""
    with running_server(tmp_path_factory.mktemp("serve"), "--parallel", str(PARALLEL), "--queue", "8",
                        "--dtype", "float32") as s:
        yield s


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    """A server with an API key and a small body limit (the key is checked first)."""
    with running_server(tmp_path_factory.mktemp("keyed"), "--api-key", KEY, "--max-body", str(SMALL_BODY)) as s:
        yield s


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def oll(server):
    return ollama.Client(host=server.url, timeout=TIMEOUT)


def post(url: str, path: str, body=None, content: bytes | None = None, **headers: str) -> httpx.Response:
    """POST a JSON body (or raw bytes) with a timeout; `x_api_key="k"` sends the header X-Api-Key."""
    headers = {name.replace("_", "-"): value for name, value in headers.items()}
    if content is None:
        return httpx.post(url + path, json=body, headers=headers, timeout=TIMEOUT)
    return httpx.post(url + path, content=content, headers={"content-type": "application/json", **headers},
                      timeout=TIMEOUT)


def send_verbatim(method: str, url: str, path: str, body=None, headers: dict | None = None) -> httpx.Response:
    """A request with its header values exactly as given, as curl and fetch send them: httpx refuses a trailing
    space, and llama.vim sends `Authorization: Bearer ` with its empty key."""
    address = httpx.URL(url)
    connection = http.client.HTTPConnection(address.host, address.port, timeout=TIMEOUT)
    try:
        data = None if body is None else json.dumps(body).encode()
        connection.request(method, path, body=data, headers={"content-type": "application/json", **(headers or {})})
        reply = connection.getresponse()
        return httpx.Response(reply.status, headers=reply.getheaders(), content=reply.read())
    finally:
        connection.close()


def get(url: str, path: str, **headers: str) -> httpx.Response:
    return httpx.get(url + path, headers={name.replace("_", "-"): v for name, v in headers.items()}, timeout=TIMEOUT)


def infill(url: str, **fields) -> dict:
    response = post(url, "/infill", {"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": N} | fields)
    assert response.status_code == 200, response.text
    return response.json()


def sse_events(text: str) -> list:
    """The `data:` payloads of a server-sent event stream, parsed ("[DONE]" kept as the string)."""
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        payload = block.removeprefix("data: ")
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def assert_error(path: str, response: httpx.Response, status: int) -> dict:
    """A refusal in the protocol's own error shape; its error object (Ollama: the body)."""
    assert response.status_code == status, (path, response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"], body
    error = body["error"]
    protocol = PROTOCOL.get(path) or ("ollama" if path.startswith("/api/") else "openai" if path.startswith("/v1/")
                                      else "sc2" if path.startswith("/sc2/") else "llama.cpp")
    if protocol == "ollama":
        assert isinstance(error, str) and error, body
        return body
    assert set(error) == ERROR_KEYS[protocol], body
    if protocol != "openai":
        assert error["code"] == status, body
    assert isinstance(error["message"], str) and error["message"], body
    assert isinstance(error["type"], str) and error["type"], body
    return error


def assert_healthy(url: str) -> None:
    response = get(url, "/health")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def shipped_parameters() -> int:
    """The shipped checkpoint's parameter count, read from its weights file."""
    with safe_open(str(shipped_model_dir() / "model.safetensors"), "pt") as weights:
        return sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())


# --- OpenAI: the official client -------------------------------------------------------------------------------


def test_openai_infill_returns_text_usage_and_a_finish_reason(oai):
    reply = oai.completions.create(model=MODEL, prompt=PREFIX, suffix=SUFFIX, max_tokens=N, temperature=0)
    assert reply.object == "text_completion" and reply.model == MODEL and reply.id
    (choice,) = reply.choices
    assert isinstance(choice.text, str) and choice.index == 0 and choice.logprobs is None
    assert choice.finish_reason in {"stop", "length"}
    usage = reply.usage
    assert usage.prompt_tokens > 0 and 0 <= usage.completion_tokens <= N
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert 0 <= usage.prompt_tokens_details.cached_tokens < usage.prompt_tokens


def test_openai_repeat_reuses_the_cached_prompt_and_gives_the_same_text(oai):
    first = oai.completions.create(model=MODEL, prompt="import os\nimport sys\n", max_tokens=N, temperature=0)
    again = oai.completions.create(model=MODEL, prompt="import os\nimport sys\n", max_tokens=N, temperature=0)
    assert again.choices[0].text == first.choices[0].text
    assert again.usage.prompt_tokens == first.usage.prompt_tokens
    # The slot kept the prompt: all but the token re-evaluated to get the next logits is reused.
    assert 0 < again.usage.prompt_tokens_details.cached_tokens < again.usage.prompt_tokens


def test_openai_stream_ends_at_done_and_equals_the_reply(oai, server):
    whole = oai.completions.create(model=MODEL, prompt=PREFIX, suffix=SUFFIX, max_tokens=N, temperature=0)
    chunks = list(oai.completions.create(model=MODEL, prompt=PREFIX, suffix=SUFFIX, max_tokens=N, temperature=0,
                                         stream=True, stream_options={"include_usage": True}))
    *text_chunks, usage_chunk = chunks
    assert "".join(c.choices[0].text for c in text_chunks) == whole.choices[0].text
    reasons = [c.choices[0].finish_reason for c in text_chunks]
    assert reasons[-1] == whole.choices[0].finish_reason and set(reasons[:-1]) <= {None}
    assert usage_chunk.choices == [] and usage_chunk.usage.prompt_tokens == whole.usage.prompt_tokens
    assert usage_chunk.usage.completion_tokens == whole.usage.completion_tokens
    assert len({c.id for c in chunks}) == 1
    # On the wire: SSE ending with the [DONE] sentinel (where the client stops reading).
    raw = post(server.url, "/v1/completions", {"model": MODEL, "prompt": PREFIX, "max_tokens": 4, "stream": True})
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.endswith("data: [DONE]\n\n") and sse_events(raw.text)[-1] == "[DONE]"


def test_openai_n_gives_that_many_choices(oai):
    reply = oai.completions.create(model=MODEL, prompt="class Stack:\n", max_tokens=8, temperature=0, n=2)
    assert [c.index for c in reply.choices] == [0, 1]
    assert reply.choices[0].text == reply.choices[1].text  # greedy: both the same
    assert reply.usage.completion_tokens <= 2 * 8
    sampled = oai.completions.create(model=MODEL, prompt="class Stack:\n", max_tokens=8, temperature=1.0, n=2,
                                     seed=7)
    assert len(sampled.choices) == 2 and all(c.finish_reason in {"stop", "length"} for c in sampled.choices)


def test_openai_logprobs_describe_the_text_token_by_token(oai):
    reply = oai.completions.create(model=MODEL, prompt="for i in range(10):\n", max_tokens=8, temperature=0,
                                   logprobs=1)
    choice = reply.choices[0]
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) > 0
    assert all(isinstance(t, str) for t in lp.tokens)
    assert all(is_number(v) and v <= 0 for v in lp.token_logprobs)
    assert all(isinstance(top, dict) and len(top) >= 1 for top in lp.top_logprobs)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    assert "".join(lp.tokens) == choice.text
    assert reply.usage.completion_tokens == len(lp.tokens)


def test_openai_stop_string_and_list_cut_the_text(oai):
    prompt = "def fib(n):\n"
    free = oai.completions.create(model=MODEL, prompt=prompt, max_tokens=N, temperature=0).choices[0].text
    word = next(free[i:i + 2] for i in range(1, len(free) - 1) if free[i:i + 2].strip())  # one that occurs
    expected = free[:free.index(word)]
    for stop in (word, ["never-in-this-text", word]):
        choice = oai.completions.create(model=MODEL, prompt=prompt, max_tokens=N, temperature=0,
                                        stop=stop).choices[0]
        assert (choice.text, choice.finish_reason) == (expected, "stop"), stop


def test_openai_unknown_model_is_not_found(oai):
    with pytest.raises(openai.NotFoundError) as caught:
        oai.completions.create(model="gpt-3.5-turbo-instruct", prompt="x", max_tokens=2)
    assert caught.value.status_code == 404 and "gpt-3.5-turbo-instruct" in caught.value.message


@pytest.mark.parametrize("wrong", [{"temperature": "hot"}, {"max_tokens": -5}, {"stop": 5}, {"n": 0},
                                   {"logprobs": 9}, {"echo": True}], ids=lambda d: next(iter(d)))
def test_openai_wrong_types_are_bad_requests(oai, wrong):
    with pytest.raises(openai.BadRequestError) as caught:
        oai.completions.create(**{"model": MODEL, "prompt": "x", "max_tokens": 2} | wrong)
    assert caught.value.status_code == 400 and caught.value.body["param"] == next(iter(wrong))


def test_the_same_infill_through_every_protocol_gives_the_same_middle(oai, oll, server):
    """OpenAI's suffix, llama.cpp's /infill and Ollama's suffix share one pipeline: greedy, the same middle."""
    through_openai = oai.completions.create(model=MODEL, prompt=PREFIX, suffix=SUFFIX, max_tokens=N,
                                            temperature=0).choices[0].text
    through_llamacpp = infill(server.url)["content"]
    through_ollama = oll.generate(model=MODEL, prompt=PREFIX, suffix=SUFFIX, stream=False,
                                  options={"num_predict": N, "temperature": 0}).response
    assert through_openai  # (an empty middle everywhere would prove little)
    assert through_openai == through_llamacpp == through_ollama


def test_models_list_a_starcoder2_id(server):
    reply = get(server.url, "/v1/models").json()
    assert reply["object"] == "list"
    (model,) = reply["data"]
    assert "starcoder2" in model["id"] and model["object"] == "model" and isinstance(model["created"], int)


# --- Ollama: the official client -------------------------------------------------------------------------------


def test_ollama_generate_reports_counts_and_integer_durations(oll):
    reply = oll.generate(model=MODEL, prompt=PREFIX, suffix=SUFFIX, stream=False,
                         options={"num_predict": N, "temperature": 0})
    assert reply.model == MODEL and isinstance(reply.response, str)
    assert reply.done is True and reply.done_reason in {"stop", "length"}
    assert reply.prompt_eval_count > 0 and 0 < reply.eval_count <= N
    for duration in (reply.total_duration, reply.prompt_eval_duration, reply.eval_duration):
        assert isinstance(duration, int) and duration > 0


def test_ollama_stream_is_ndjson_ending_with_done_and_equals_the_reply(oll, server):
    options = {"num_predict": N, "temperature": 0}
    whole = oll.generate(model=MODEL, prompt="import os\n", stream=False, options=options)
    parts = list(oll.generate(model=MODEL, prompt="import os\n", stream=True, options=options))
    assert "".join(p.response for p in parts) == whole.response
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert parts[-1].done_reason == whole.done_reason and parts[-1].eval_count == whole.eval_count
    # On the wire: one JSON object a line, and the durations are JSON integers (nanoseconds), not floats.
    raw = post(server.url, "/api/generate", {"model": MODEL, "prompt": "import os\n", "options": options})
    assert raw.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in raw.text.splitlines()]
    last = lines[-1]
    assert last["done"] is True and all(line["done"] is False for line in lines[:-1])
    assert all(type(last[k]) is int for k in ("total_duration", "prompt_eval_duration", "eval_duration",
                                             "prompt_eval_count", "eval_count"))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", last["created_at"])


def test_ollama_show_offers_fill_in_the_middle_to_continue(oll, server):
    shown = oll.show(MODEL)
    assert ".Suffix" in shown.template  # Continue's only switch for FIM
    assert "insert" in shown.capabilities
    assert 'stop "<file_sep>"' in shown.parameters.splitlines()
    legacy = post(server.url, "/api/show", {"name": MODEL + ":latest"})  # Continue sends `name`
    assert legacy.status_code == 200 and legacy.json()["template"] == shown.template


def test_ollama_tags_list_the_model_with_its_true_size(oll):
    (model,) = oll.list().models
    assert "starcoder2" in model.model
    parameters = shipped_parameters()
    assert model.details.parameter_size == f"{parameters / 1e6:.1f}M"
    bytes_per_weight = {"BFLOAT16": 2, "FLOAT16": 2, "FLOAT32": 4}[model.details.quantization_level]
    assert model.size == parameters * bytes_per_weight


def test_ollama_version_and_root(server):
    assert re.fullmatch(r"\d+\.\d+\.\d+", get(server.url, "/api/version").json()["version"])
    root = get(server.url, "/")
    assert root.status_code == 200 and root.text == "Ollama is running"


@pytest.mark.parametrize("stream", [False, True])
def test_ollama_unknown_model_is_a_404(oll, stream):
    with pytest.raises(ollama.ResponseError) as caught:
        result = oll.generate(model="llama3", prompt="x", stream=stream, options={"num_predict": 2})
        if stream:
            list(result)
    assert caught.value.status_code == 404 and "llama3" in caught.value.error
    with pytest.raises(ollama.ResponseError) as caught:
        oll.show("llama3")
    assert caught.value.status_code == 404


# --- llama.cpp: /infill as llama.vim and llama.vscode send it ---------------------------------------------------


def test_llama_vim_body_gets_the_compact_reply_llama_vim_accepts(server):
    response = send_verbatim("POST", server.url, "/infill", LLAMA_VIM, {"authorization": "Bearer "})  # its empty key
    assert response.status_code == 200, response.text
    raw = response.text
    # llama.vim drops the reply unless both match: one object, `"content":"` with no space after the colon.
    assert re.search(r"^\s*{", raw) and re.search(r'"content"\s*:"', raw), raw
    reply = json.loads(raw)
    assert set(reply) == set(LLAMA_VIM_FIELDS)  # the literal paths as keys
    assert isinstance(reply["content"], str) and reply["truncated"] is False
    assert all(is_number(reply[k]) for k in LLAMA_VIM_FIELDS if k.startswith("timings/"))
    assert isinstance(reply["tokens_cached"], int) and reply["tokens_cached"] >= reply["timings/prompt_n"]


def test_llama_vim_warm_up_answers_an_empty_object_and_fills_the_cache(server):
    ring = [{"text": "class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n",
             "time": [1738000001, 0], "filename": "src/point.py"}]
    response = post(server.url, "/infill", LLAMA_VIM_WARM_UP | {"input_extra": ring})
    assert (response.status_code, response.text) == (200, "{}")
    assert response.elapsed.total_seconds() < 10
    # The next request with that ring reuses what the warm-up evaluated.
    reply = infill(server.url, input_extra=ring, input_prefix="p = Point(1, 2)\n", input_suffix="")
    assert 0 < reply["timings"]["cache_n"] < reply["tokens_evaluated"]


def test_llama_vscode_n_cmpl_gets_an_array_of_complete_objects(server):
    response = post(server.url, "/infill", LLAMA_VSCODE)
    assert response.status_code == 200, response.text
    replies = response.json()
    assert isinstance(replies, list) and len(replies) == PARALLEL
    assert [r["index"] for r in replies] == list(range(PARALLEL))
    for reply in replies:
        assert isinstance(reply["content"], str) and reply["stop"] is True
        assert reply["generation_settings"]["n_ctx"] == CONTEXT  # read unguarded by its status bar
        assert all(is_number(reply["timings"][k]) for k in LLAMA_VSCODE_TIMINGS)
        assert isinstance(reply["tokens_cached"], int) and reply["stop_type"] in {"eos", "word", "limit"}
    assert len({r["content"] for r in replies}) == 1  # greedy (no temperature): the same middle thrice


def test_n_cmpl_beyond_the_slots_is_refused(server):
    response = post(server.url, "/infill", LLAMA_VSCODE | {"n_cmpl": PARALLEL + 1})
    assert f"more than the {PARALLEL} slot(s)" in assert_error("/infill", response, 400)["message"]


def test_infill_stream_is_sse_ending_with_stop_and_no_done(server):
    whole = infill(server.url)
    response = post(server.url, "/infill", {"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": N,
                                            "stream": True})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert "[DONE]" not in events and all(isinstance(e, dict) for e in events)
    *pieces, last = events
    assert all(e["stop"] is False for e in pieces) and last["stop"] is True and last["content"] == ""
    assert "".join(e["content"] for e in pieces) == whole["content"]
    assert last["tokens_predicted"] == whole["tokens_predicted"] and "timings" in last


def test_completion_takes_a_prompt_or_its_token_ids(server):
    prompt = "def add(a, b):\n    return"
    ids = Tokenizer.from_dir(shipped_model_dir()).encode(prompt)
    by_text = post(server.url, "/completion", {"prompt": prompt, "n_predict": N, "temperature": 0}).json()
    by_ids = post(server.url, "/completion", {"prompt": ids, "n_predict": N, "temperature": 0}).json()
    assert isinstance(by_text["content"], str) and by_text["content"] == by_ids["content"]
    assert by_text["tokens_evaluated"] == by_ids["tokens_evaluated"] == len(ids)
    assert 0 < by_text["tokens_predicted"] <= N and by_text["stop_type"] in {"eos", "word", "limit"}


def test_health(server):
    assert_healthy(server.url)


def test_without_a_key_any_authorization_header_is_ignored(server):
    for value in ("Bearer ", "Bearer undefined", ""):
        response = send_verbatim("POST", server.url, "/infill",
                                 {"input_prefix": "x", "input_suffix": "", "n_predict": 1}, {"authorization": value})
        assert response.status_code == 200, (value, response.text)
    assert get(server.url, "/v1/models", authorization="Bearer undefined").status_code == 200


# --- Bad input: a 4xx in the protocol's shape on every route, and the server stays up -----------------------------

NOT_JSON = [("invalid JSON", b'{"prompt": "x",'), ("an array", b"[1, 2]"), ("a string", b'"x"'),
            ("empty", b""), ("invalid UTF-8", b'{"prompt": "\xff"}'), ("nested too deeply", b"[" * 100_000)]
WRONG_FIELDS = {
    "/infill": [{"input_suffix": ""}, {"input_prefix": "x"}, {"input_prefix": 5, "input_suffix": ""},
                {"input_prefix": "x", "input_suffix": "", "n_predict": "ten"},
                {"input_prefix": "x", "input_suffix": "", "n_predict": -5},
                {"input_prefix": "x", "input_suffix": "", "n_predict": 10**9},
                {"input_prefix": "x", "input_suffix": "", "temperature": "hot"},
                {"input_prefix": "x", "input_suffix": "", "input_extra": "x"},
                {"input_prefix": "x", "input_suffix": "", "input_extra": [{"text": 5}]},
                {"input_prefix": "x", "input_suffix": "", "n_indent": -1},
                {"input_prefix": "x", "input_suffix": "", "mode": "sideways"}],
    "/completion": [{}, {"prompt": 5}, {"prompt": [[1, 2]]}, {"prompt": [10**6]}, {"prompt": ""},
                    {"prompt": "x", "n_predict": "ten"}, {"prompt": "x", "n_predict": 10**9},
                    {"prompt": "x", "temperature": "hot"}, {"prompt": "x", "stop": 5},
                    {"prompt": TOO_LONG, "n_predict": 4}, {"prompt": TOO_LONG, "n_predict": 4, "stream": True}],
    "/v1/completions": [{}, {"prompt": 5}, {"prompt": "x", "max_tokens": -5}, {"prompt": "x", "max_tokens": 0},
                        {"prompt": "x", "max_tokens": "ten"}, {"prompt": "x", "max_tokens": 10**9},
                        {"prompt": "x", "temperature": "hot"}, {"prompt": "x", "temperature": 3},
                        {"prompt": "x", "stop": 5}, {"prompt": "x", "n": 2, "stream": True},
                        {"prompt": "x", "suffix": 5}, {"prompt": TOO_LONG, "max_tokens": 4},
                        {"prompt": TOO_LONG, "max_tokens": 4, "stream": True}],
    "/api/generate": [{"prompt": "x"}, {"model": MODEL, "prompt": 5}, {"model": MODEL, "prompt": "x", "options": 5},
                      {"model": MODEL, "prompt": "x", "options": {"num_predict": "ten"}},
                      {"model": MODEL, "prompt": "x", "options": {"num_predict": -5}},
                      {"model": MODEL, "prompt": "x", "options": {"num_predict": 10**9}},
                      {"model": MODEL, "prompt": "x", "options": {"temperature": "hot"}},
                      {"model": MODEL, "prompt": "x", "stream": "yes"},
                      {"model": MODEL, "prompt": TOO_LONG, "options": {"num_predict": 4}, "stream": False},
                      {"model": MODEL, "prompt": TOO_LONG, "options": {"num_predict": 4}}],
    "/api/show": [{}, {"model": 5}],
    "/sc2/v1/infill": [{"suffix": ""}, {"prefix": "x"}, {"prefix": "x", "suffix": "", "job": 5},
                       {"prefix": "x", "suffix": "", "job": {"max_new_tokens": "ten"}},
                       {"prefix": "x", "suffix": "", "job": {"max_new_tokens": -5}},
                       {"prefix": "x", "suffix": "", "job": {"max_new_tokens": 10**9}},
                       {"prefix": "x", "suffix": "", "context": [{"path": 5}]},
                       {"prefix": "x", "suffix": "", "context": 5}],
    "/sc2/v1/complete": [{}, {"prompt": 5}, {"prompt": ""}, {"prompt": "x", "job": {"max_new_tokens": -5}},
                         {"prompt": "x", "job": {"temperature": "hot"}}, {"prompt": "x", "truncate": "no"}],
}
def _wrong_field_cases():
    for path, bodies in WRONG_FIELDS.items():
        for i, body in enumerate(bodies):
            yield pytest.param(path, body, id=f"{path}-{i}")


@pytest.mark.parametrize("path", GENERATING)
@pytest.mark.parametrize("what, raw", NOT_JSON, ids=[w for w, _ in NOT_JSON])
def test_a_body_that_is_not_a_json_object_is_a_400(server, path, what, raw):
    assert_error(path, post(server.url, path, content=raw), 400)
    assert_healthy(server.url)


@pytest.mark.parametrize("path, body", list(_wrong_field_cases()))
def test_a_wrong_field_is_a_4xx_in_the_protocols_shape(server, path, body):
    error = assert_error(path, post(server.url, path, body), 400)
    if path == "/completion" and body.get("prompt") == TOO_LONG:
        assert error["type"] == "exceed_context_size_error"
    assert_healthy(server.url)


def test_unknown_model_names_are_404_in_their_protocols(server):
    assert_error("/v1/completions", post(server.url, "/v1/completions", {"model": "nope", "prompt": "x"}), 404)
    assert_error("/api/generate", post(server.url, "/api/generate", {"model": "nope", "prompt": "x"}), 404)
    assert_error("/api/show", post(server.url, "/api/show", {"model": "nope"}), 404)


@pytest.mark.parametrize("path", ["/nope", "/v1/nope", "/api/nope", "/sc2/v1/nope", "/infill/x"])
def test_an_unknown_route_is_a_404_in_shape(server, path):
    assert_error(path, get(server.url, path), 404)


@pytest.mark.parametrize("method, path", [("GET", "/infill"), ("GET", "/v1/completions"), ("GET", "/api/generate"),
                                          ("POST", "/health"), ("DELETE", "/"), ("PUT", "/sc2/v1/infill")])
def test_a_wrong_method_is_a_405_in_shape_naming_the_allowed_ones(server, method, path):
    response = httpx.request(method, server.url + path, timeout=TIMEOUT)
    assert_error(path, response, 405)
    assert method not in response.headers["allow"] and response.headers["allow"]


# --- Body limit and API key -------------------------------------------------------------------------------------

BEARER = {"authorization": f"Bearer {KEY}"}


@pytest.mark.parametrize("path", GENERATING)
def test_a_body_over_the_limit_is_a_413_declared_or_chunked(keyed_server, path):
    big = json.dumps({"prompt": "x" * 10_000, "input_prefix": "x" * 10_000}).encode()
    assert_error(path, post(keyed_server.url, path, content=big, **BEARER), 413)
    assert_error(path, post(keyed_server.url, path, content=big), 401)  # the key is checked before the body

    def chunks():  # no Content-Length: the server counts as it reads
        for i in range(0, len(big), 1000):
            yield big[i:i + 1000]

    chunked = httpx.post(keyed_server.url + path, content=chunks(), timeout=TIMEOUT,
                         headers={"content-type": "application/json", **BEARER})
    assert "content-length" not in chunked.request.headers
    assert_error(path, chunked, 413)
    assert_healthy(keyed_server.url)


@pytest.mark.parametrize("method, path, body", [
    ("POST", "/infill", {"input_prefix": "x", "input_suffix": "", "n_predict": 1}),
    ("POST", "/v1/completions", {"prompt": "x", "max_tokens": 1}),
    ("POST", "/api/generate", {"model": MODEL, "prompt": "x", "stream": False, "options": {"num_predict": 1}}),
    ("GET", "/v1/models", None)])
def test_the_key_is_required_and_accepted_in_either_header(keyed_server, method, path, body):
    def call(**headers):
        return send_verbatim(method, keyed_server.url, path, body, headers)

    for refused in ({}, {"authorization": "Bearer "}, {"authorization": "Bearer wrong"}, {"x-api-key": "wrong"}):
        assert_error(path, call(**refused), 401)
    for accepted in (BEARER, {"x-api-key": KEY}):
        response = call(**accepted)
        assert response.status_code == 200, (accepted, response.text)


def test_health_stays_public_with_a_key(keyed_server):
    assert_healthy(keyed_server.url)
    assert get(keyed_server.url, "/v1/health").status_code == 200


def test_official_clients_send_the_key(keyed_server):
    good = openai.OpenAI(base_url=keyed_server.url + "/v1", api_key=KEY, max_retries=0, timeout=TIMEOUT)
    assert good.completions.create(model=MODEL, prompt="x", max_tokens=1).choices
    bad = openai.OpenAI(base_url=keyed_server.url + "/v1", api_key="wrong", max_retries=0, timeout=TIMEOUT)
    with pytest.raises(openai.AuthenticationError):
        bad.completions.create(model=MODEL, prompt="x", max_tokens=1)
    client = ollama.Client(host=keyed_server.url, timeout=TIMEOUT, headers=BEARER)
    assert "starcoder2" in client.list().models[0].model
    with pytest.raises(ollama.ResponseError) as caught:
        ollama.Client(host=keyed_server.url, timeout=TIMEOUT).list()
    assert caught.value.status_code == 401


def test_the_key_from_the_environment_works_like_the_flag(tmp_path):
    with running_server(tmp_path, SC2_API_KEY=KEY) as server:
        assert_error("/v1/models", get(server.url, "/v1/models"), 401)
        assert get(server.url, "/v1/models", **BEARER).status_code == 200
        assert get(server.url, "/v1/models", x_api_key=KEY).status_code == 200
        assert_healthy(server.url)


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_a_network_address_without_a_key_refuses_to_start(tmp_path, host):
    # A model that does not exist: the refusal must come before anything is resolved or loaded.
    result = run_sc2(["serve", "--host", host, "--port", str(free_port()), "-m", str(tmp_path / "no-model")],
                     tmp_path, timeout=TIMEOUT)
    assert_one_line_error(result, 2, f"--host {host}", "--api-key")


# --- Concurrency ------------------------------------------------------------------------------------------------


def _at_once(url: str, bodies: list[dict]) -> list[dict]:
    """POST each body to /infill from its own thread, all released together; the replies in order."""
    replies: list = [None] * len(bodies)
    start = threading.Barrier(len(bodies))

    def send(i: int) -> None:
        start.wait()
        replies[i] = post(url, "/infill", bodies[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert all(r is not None and r.status_code == 200 for r in replies), replies
    return [r.json() for r in replies]


def test_the_same_greedy_infill_sent_at_once_gives_the_same_middle(server):
    body = {"input_prefix": "def mean(xs):\n    ", "input_suffix": "\n", "n_predict": N}
    contents = [r["content"] for r in _at_once(server.url, [body] * 4)]
    assert len(set(contents)) == 1
    assert contents[0] == infill(server.url, **body)["content"]


def test_different_infills_at_once_each_give_their_own_middle(server):
    bodies = [{"input_prefix": prefix, "input_suffix": "\n", "n_predict": N}
              for prefix in ("import json\n", "class A:\n    ", "def f(x):\n    return ", "for i in ")]
    alone = [infill(server.url, **body)["content"] for body in bodies]
    assert [r["content"] for r in _at_once(server.url, bodies)] == alone
