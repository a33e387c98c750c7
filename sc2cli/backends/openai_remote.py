"""A remote engine behind an OpenAI-compatible `POST /v1/completions` (vLLM, TGI, llama.cpp's llama-server,
llama-cpp-python's `llama_cpp.server`, `sc2 serve`) as a backend: sc2 builds the prompt with the model's own
tokenizer, the engine only generates, and the text comes back through the same filters as a local run (stop strings,
then the job's line/block filter), so that the pipelines rank and write exactly as they do locally.

    backend = OpenAIBackend.connect("http://127.0.0.1:8000", checkpoint, model_given=False)
    run = backend.generate([prompt_ids], job, on_step=print)

The prompt goes as token ids (`prompt: int[]`, which vLLM, llama.cpp and sc2 serve take): text that spells
`<file_sep>` or `<fim_prefix>` in a file stays text. A server that takes only text gets the prompt as text, unless
that text would turn into other tokens there (a file that spells a special token): then nothing is sent.

Each row (prompt x sample) is one streamed request with `n` 1 (sc2 serve streams one row per request and
llama-cpp-python ignores `n`; a server with a prefix cache shares their prompt anyway). A row ends when the server
ends it or as soon as a filter does: its connection is then closed, so that the server stops generating for it.

The standard library only, and no torch: a command with --server never imports it.
"""

from __future__ import annotations

import copy
import http.client
import json
import os
import queue
import random
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..errors import InputError, Sc2Error
from ..generation.params import MAX_SEED
from ..generation.results import Completion, Step
from ..generation.stopping import Chain, StopStringMatcher, TextFilter
from ..tokenizer import SPECIAL_TOKENS, Tokenizer, boundary_token_ids
from .base import Cancelled, GenerationJob, GenerationRun

CONNECT_TIMEOUT_S = 10
READ_TIMEOUT_S = 600  # a long generation on a slow machine, or a wait in the server's queue
CHECK_TIMEOUT_S = 30  # the questions asked before generating (/v1/models, /tokenize)
BUSY_WAIT_S = 120  # how long a row waits for a server that answers 503 (busy, loading) before giving up
RANDOM_SEEDS = 2**31  # a seed sc2 picks fits every engine (llama.cpp's is 32-bit)
POLL_S = 0.05  # how often a waiting run asks whether it was cancelled
# A text whose tokens every StarCoder2-style tokenizer agrees on only if it is the same tokenizer: code, digits
# (split one by one), non-ASCII text, runs of spaces.
PROBE = "def probe(x):\n    return x * 31 + len('héllo wörld')  # 2024-06-01\n\n\n\tpass\n"
TEXT_ONLY_HINT = "a server that takes token ids runs it: vLLM, llama.cpp's llama-server, sc2 serve"
DONE = {"choices": [{"text": "", "finish_reason": "stop"}]}


class _Refused(Exception):
    """A reply other than 200: its status, its message in one line, and the raw body (to tell what it refused)."""

    def __init__(self, status: int, message: str, body: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.retry_after = retry_after


@dataclass
class _Row:
    """One streamed request: its filter, what it made, and its connection (closed to end it early)."""

    index: int
    ids: list[int]
    seed: int | None
    filter: TextFilter
    completion: Completion
    owed: str = ""  # the prompt's trailing whitespace the text must begin with (token healing), until it has
    heard: str = ""  # the text so far, while it is still owed
    attempt: int = 0  # which request of the row the events are of (a row is asked again once, see _take)
    logprobs: list[float] = field(default_factory=list)
    done: bool = False
    closed: bool = False  # for good: the run is over for this row
    connection: http.client.HTTPConnection | None = None
    # (kept apart: once a response that ends with the connection has begun, the connection lets go of its socket)
    sock: socket.socket | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def attach(self, connection: http.client.HTTPConnection) -> None:
        with self.lock:
            if not self.closed:
                self.connection, self.sock = connection, connection.sock
                return
        connection.close()
        raise Cancelled()

    def close(self, for_good: bool = True) -> None:
        """End the stream now: shutting the socket down wakes the thread reading it, and tells the server."""
        with self.lock:
            connection, sock, self.connection, self.sock = self.connection, self.sock, None, None
            self.closed = self.closed or for_good
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        if connection is not None:
            connection.close()


_ASK_AGAIN = object()  # what _take answers when a row must be asked again with its whitespace in the prompt


class OpenAIBackend:
    """An OpenAI-compatible server at `url` running the model whose tokenizer and config are given (they build and
    size the prompt here). `connect` checks the server against them first."""

    def __init__(self, url: str, tokenizer: Tokenizer, config, name: str) -> None:
        self.url = url
        self.target = _address(url)
        self.tokenizer = tokenizer
        self.config = config
        self.name = name  # the server's model id once known, else the local model's reference
        self.model_id: str | None = None  # what requests name as `model` (the id the server lists)
        self.notes: list[str] = []  # what the user should know (said on stderr by the command)
        self.loaded = None  # (nothing is loaded here: no load time to report)
        self._as_text: bool | None = None  # None until the first request shows whether token ids are taken
        self._learning = threading.Lock()
        self._logprobs = True  # asked for (ranking samples needs them) until a server refuses them

    # ---- the server ---------------------------------------------------------------------------------------------

    @classmethod
    def connect(cls, url: str, checkpoint, model_given: bool) -> OpenAIBackend:
        """The backend for the server at `url`, with `checkpoint`'s tokenizer and config, checked against what the
        server says of its model: a vocabulary or a context of another size is an error telling to pass --model
        (`model_given`: the user named this model). Its context: the server's where it is smaller."""
        backend = cls(url, checkpoint.tokenizer, copy.copy(checkpoint.config), checkpoint.ref)
        backend._check_model(checkpoint.ref, model_given)
        backend._check_tokenizer(checkpoint.ref, model_given)
        return backend

    def _check_model(self, ref: str, model_given: bool) -> None:
        try:
            listing = self._get("/v1/models")
        except _Refused:
            listing = None
        entries = listing.get("data") if isinstance(listing, dict) else None
        entry = entries[0] if isinstance(entries, list) and entries and isinstance(entries[0], dict) else {}
        meta = entry.get("meta") if isinstance(entry.get("meta"), dict) else {}
        if isinstance(entry.get("id"), str) and entry["id"]:
            self.model_id = self.name = entry["id"]
        fix = ("pass the --model the server runs" if model_given else
               f"pass --model with the model the server runs (without it sc2 assumes its default, {ref})")
        ours = self.config.vocab_size
        vocab = _count(meta.get("n_vocab"))
        if vocab is not None and vocab != ours:
            raise InputError(f"the server at {self.url} runs a model with {vocab} tokens in its vocabulary, but "
                             f"{ref} has {ours}: {fix}", field="model")
        context = self.config.max_position_embeddings
        trained = _count(meta.get("n_ctx_train"))
        if trained is not None and trained != context:
            raise InputError(f"the server at {self.url} runs a model trained for a {trained}-token context, but "
                             f"{ref} has {context}: {fix}", field="model")
        serving = _count(entry.get("max_model_len")) or _count(meta.get("n_ctx"))
        if serving is not None and serving > context and trained is None:
            raise InputError(f"the server at {self.url} serves a {serving}-token context, but {ref} has "
                             f"{context}: {fix}", field="model")
        if serving is not None and serving < context:
            self.config.max_position_embeddings = serving
            self.notes.append(f"the server at {self.url} serves {serving} tokens of {ref}'s {context}-token "
                              "context: the prompt is fitted to those")
        elif serving is None and trained is None:
            self.notes.append(f"the server at {self.url} does not say its context size: assuming {ref}'s "
                              f"{context} tokens for the prompt budget")

    def _check_tokenizer(self, ref: str, model_given: bool) -> None:
        """Where the server tokenizes text for us (vLLM's and llama.cpp's /tokenize), it must split a probe text
        exactly as the local tokenizer does: the prompt is built here."""
        probe = {"content": PROBE, "prompt": PROBE, "add_special": False, "add_special_tokens": False}
        try:
            reply = self._post_json("/tokenize", probe)
        except (_Refused, ValueError):
            return  # no such route (or another kind of one): nothing to check
        tokens = reply.get("tokens") if isinstance(reply, dict) else None
        if not (isinstance(tokens, list) and all(isinstance(t, int) for t in tokens)):
            return
        if tokens != self.tokenizer.encode_text(PROBE):
            fix = "pass the --model the server runs" if model_given else "pass --model with the model the server runs"
            raise InputError(f"the server at {self.url} splits text into tokens otherwise than {ref}'s tokenizer "
                             f"does: {fix}", field="model")

    # ---- the backend seam ---------------------------------------------------------------------------------------

    def check(self, job: GenerationJob, rows: int) -> GenerationJob:
        """Refuse what only sc2's own engine does."""
        if job.decode.strip().lower() != "auto":
            raise InputError("a remote engine runs its own decode loop: only auto applies to a remote server",
                             field="decode")
        if job.prompt_lookup:
            raise InputError("prompt lookup is part of sc2's own engine: it does not apply to a remote server",
                             field="prompt_lookup")
        return job

    def generate(self, prompts: Sequence[Sequence[int]], job: GenerationJob,
                 on_step: Callable[[Step], None] | None = None) -> GenerationRun:
        job = self.check(job, len(prompts) * job.num_samples)
        sampling = job.sampling
        seed = sampling.seed if sampling.seed is not None else random.randrange(RANDOM_SEEDS)
        rows = []
        for prompt in prompts:
            for _ in range(job.num_samples):
                index = len(rows)
                matcher = StopStringMatcher(job.stop)  # (as the engine's StopConditions.make_filter)
                text_filter = Chain(matcher, job.text_filter(index)) if job.text_filter else matcher
                row_seed = None if sampling.greedy else (seed + index) % (MAX_SEED + 1)
                rows.append(_Row(index, list(prompt), row_seed, text_filter, Completion(row=index), owed=job.heal))
        events: queue.Queue = queue.Queue()

        def start(row: _Row) -> None:
            threading.Thread(target=self._read, args=(row, row.attempt, job, events), daemon=True,
                             name=f"sc2-remote-{row.index}").start()

        started = time.perf_counter()
        first = None
        for row in rows:
            start(row)
        try:
            while not all(row.done for row in rows):
                if job.cancelled is not None and job.cancelled():
                    raise Cancelled()
                try:
                    index, attempt, event = events.get(timeout=POLL_S)
                except queue.Empty:
                    continue
                row = rows[index]
                if row.done or attempt != row.attempt:
                    continue
                if isinstance(event, BaseException):
                    raise event
                if event is None:
                    raise Sc2Error(f"the server at {self.url} ended a stream before its end (it may have stopped)")
                if first is None:
                    first = time.perf_counter()
                step = self._take(row, event)
                if step is _ASK_AGAIN:
                    # Token healing (job.heal: the whitespace cut from the prompt's end) makes the local engine
                    # begin every row with that whitespace, by masking the first tokens' logits; a remote engine
                    # takes no such constraint. So the prompt goes without it, and a row that begins with it anyway
                    # (the model's own first choice: most rows, and then the very text the local engine makes) only
                    # has it cut. A row that begins otherwise is asked again with the whitespace put back at the
                    # prompt's end: the best a remote engine allows, though a prompt that ends in whitespace is
                    # one the model rarely saw (on sc2-tiny it often ends at once or starts anew).
                    row.close(for_good=False)
                    row.attempt += 1
                    row.ids = row.ids + self.tokenizer.encode_text(row.owed)
                    row.owed = row.heard = ""
                    row.logprobs = []
                    start(row)
                    continue
                if row.done:
                    row.close()  # a filter ended it, or the server did: the server need not go on
                if on_step is not None and step is not None:
                    on_step(step)
        finally:
            for row in rows:
                row.close()
        end = time.perf_counter()
        first = first or end
        completions = [self._finished(row) for row in rows]
        return GenerationRun(completions, seed, first - started, end - first)

    def _take(self, row: _Row, chunk: dict):
        """One stream chunk of `row` through its filters: the step it makes (None when it holds no choice), or
        _ASK_AGAIN when its text does not begin with the whitespace it owes."""
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return None  # (a usage chunk)
        choice = choices[0]
        raw = choice.get("text") if isinstance(choice.get("text"), str) else ""
        logprobs = _logprobs(choice.get("logprobs"))
        reason = choice.get("finish_reason")
        text = raw
        if row.owed:
            row.heard += raw
            if row.heard.startswith(row.owed):
                text, row.owed, row.heard = row.heard[len(row.owed):], "", ""  # (the prompt's own: not repeated)
            elif row.owed.startswith(row.heard) and not reason:
                row.logprobs.extend(logprobs)
                return Step(row.index, -1, "", sum(logprobs), None, raw=raw)
            else:
                return _ASK_AGAIN
        row.logprobs.extend(logprobs)
        text, stopped = row.filter.feed(text)
        if stopped:
            finish = "stop"
        elif reason:
            # As the engine's last step: what the filters still hold is final text; only a limit is "length".
            text += row.filter.flush()
            finish = "length" if reason == "length" else "stop"
        else:
            finish = None
        row.completion.text += text
        if finish is not None:
            row.done = True
            row.completion.finish_reason = finish
        return Step(row.index, -1, text, sum(logprobs), finish, raw=raw)

    def _finished(self, row: _Row) -> Completion:
        """The row's completion: its tokens are the local tokenizer's of its text (the server's are not streamed),
        its log-probability what the server reported (0 where it reports none)."""
        c = row.completion
        c.tokens = self.tokenizer.encode_text(c.text)
        c.token_logprobs = row.logprobs[: len(c.tokens)]
        c.logprob = sum(row.logprobs)
        return c

    # ---- one row's stream ---------------------------------------------------------------------------------------

    def _read(self, row: _Row, attempt: int, job: GenerationJob, events: queue.Queue) -> None:
        """In a thread: open the row's stream and pass its chunks on (then None at its end); an error is passed on
        too, unless the row was closed on purpose."""
        try:
            response = self._open(row, job)
            for chunk in _events(response):
                if "error" in chunk:
                    error = chunk["error"]
                    message = error.get("message") if isinstance(error, dict) else error
                    raise Sc2Error(f"the server at {self.url} failed while generating: {_one_line(message)}")
                events.put((row.index, attempt, chunk))
            events.put((row.index, attempt, None))
        except BaseException as err:  # (a stream closed on purpose raises too: that is no news)
            if not row.closed and attempt == row.attempt:
                if isinstance(err, (ConnectionError, socket.timeout, http.client.HTTPException, OSError)):
                    reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
                    err = Sc2Error(f"the stream from the server at {self.url} broke off: {reason}")
                events.put((row.index, attempt, err))

    def _open(self, row: _Row, job: GenerationJob):
        """The row's streamed response. The first request learns whether the server takes token ids (the others
        wait for it); one that refuses the log-probabilities is asked again without."""
        with self._learning:
            if self._as_text is None:
                try:
                    response = self._post_stream(row, self._body(row, job, as_text=False))
                    self._as_text = False
                    return response
                except _Refused as refused:
                    if not _refuses_token_ids(refused):
                        raise self._error(refused) from None
                self._as_text = True
        return self._post_stream(row, self._body(row, job, as_text=self._as_text))

    def _body(self, row: _Row, job: GenerationJob, as_text: bool) -> dict:
        s = job.sampling
        context = self.config.max_position_embeddings
        body = {
            "prompt": self._prompt_text(row.ids) if as_text else row.ids,
            # (as the engine: no further than the context's end)
            "max_tokens": max(1, min(job.max_new_tokens, context - len(row.ids))),
            "temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k, "min_p": s.min_p,
            "repeat_penalty": s.repetition_penalty,  # (llama-cpp-python's name; its default is 1.1, not off)
            "n": 1, "stream": True,
        }
        if self.model_id:
            body["model"] = self.model_id
        if s.repetition_penalty != 1.0:
            body["repetition_penalty"] = s.repetition_penalty
        if row.seed is not None:
            body["seed"] = row.seed
        if job.stop:
            body["stop"] = list(job.stop)
        if job.ignore_eos:
            body["ignore_eos"] = True
        else:
            body["stop_token_ids"] = sorted(boundary_token_ids(self.tokenizer))  # (vLLM's: the file boundaries)
        if job.num_samples > 1 and self._logprobs:
            body["logprobs"] = 1  # (to rank the samples)
        return body

    def _prompt_text(self, ids: list[int]) -> str:
        """The prompt as text for a server that takes no token ids, refused when that text would tokenize into
        other special tokens there: file text that spells `<file_sep>` must not become a file boundary."""
        text = self.tokenizer.decode(ids)
        spelled = [s for s in SPECIAL_TOKENS if s in text and text.count(s) > ids.count(self.tokenizer.special_id(s))]
        if spelled:
            raise InputError(f"the server at {self.url} takes prompts only as text, and this prompt's code spells "
                             f"{', '.join(spelled)}, which the server would read as a control token: not sent "
                             f"({TEXT_ONLY_HINT})", field="server")
        return text

    def _post_stream(self, row: _Row, body: dict):
        """POST the body; the response once its status is 200 (a busy server is asked again, a refusal of the
        log-probabilities is asked again without them)."""
        deadline = time.monotonic() + BUSY_WAIT_S
        while True:
            connection = self._connection(READ_TIMEOUT_S)
            row.attach(connection)
            try:
                connection.request("POST", self.target.path + "/v1/completions", json.dumps(body).encode("utf-8"),
                                   self._headers("text/event-stream"))
                response = connection.getresponse()
            except (ConnectionError, socket.timeout, http.client.HTTPException, OSError) as err:
                if row.closed:
                    raise Cancelled() from None
                raise self._unreachable(err) from None
            if response.status == 200:
                return response
            refused = _refusal(response)
            row.close(for_good=False)
            if refused.status == 503 and time.monotonic() < deadline:
                time.sleep(refused.retry_after or 1.0)
                continue
            if "logprobs" in body and ("logprob" in refused.body.lower() or refused.status >= 500):
                self._logprobs = False
                body = {k: v for k, v in body.items() if k != "logprobs"}
                continue
            raise refused

    # ---- HTTP ---------------------------------------------------------------------------------------------------

    def _connection(self, read_timeout: float) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self.target.scheme == "https" else http.client.HTTPConnection
        connection = kind(self.target.host, self.target.port, timeout=CONNECT_TIMEOUT_S)
        try:
            connection.connect()
        except (ConnectionError, socket.timeout, socket.gaierror, OSError) as err:
            raise self._unreachable(err) from None
        connection.sock.settimeout(read_timeout)
        return connection

    def _headers(self, accept: str) -> dict:
        headers = {"Content-Type": "application/json", "Accept": accept}
        if os.environ.get("SC2_API_KEY"):
            headers["Authorization"] = f"Bearer {os.environ['SC2_API_KEY']}"
        return headers

    def _get(self, path: str):
        return self._call("GET", path, None)

    def _post_json(self, path: str, body: dict):
        return self._call("POST", path, json.dumps(body).encode("utf-8"))

    def _call(self, method: str, path: str, data: bytes | None):
        """A JSON request and its JSON reply (_Refused for another status; ValueError for a reply not JSON)."""
        connection = self._connection(CHECK_TIMEOUT_S)
        try:
            connection.request(method, self.target.path + path, data, self._headers("application/json"))
            response = connection.getresponse()
            if response.status != 200:
                refused = _refusal(response)
                if refused.status == 401:
                    raise self._error(refused)
                raise refused
            return json.loads(response.read())
        except (ConnectionError, socket.timeout, http.client.HTTPException, OSError) as err:
            raise self._unreachable(err) from None
        finally:
            connection.close()

    def _unreachable(self, err: BaseException) -> Sc2Error:
        reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
        return Sc2Error(f"cannot reach the server at {self.url}: {reason} (is an OpenAI-compatible server running "
                        "there?)")

    def _error(self, refused: _Refused) -> Sc2Error:
        if refused.status == 401:
            return InputError(f"the server at {self.url} wants an API key: set SC2_API_KEY ({refused})")
        if 400 <= refused.status < 500:
            return InputError(f"the server at {self.url} refused the request ({refused.status}): {refused}")
        return Sc2Error(f"the server at {self.url} answered {refused.status}: {refused}")


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str
    port: int | None
    path: str  # the base path, without a trailing "/v1"


def _address(url: str) -> _Target:
    target = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    if target.scheme not in ("http", "https") or not target.hostname:
        raise InputError(f"{url!r} is not a server address like http://127.0.0.1:8000", field="server")
    path = target.path.rstrip("/")
    path = path[: -len("/v1")] if path.endswith("/v1") else path  # (an OpenAI "base URL" ends with /v1)
    return _Target(target.scheme, target.hostname, target.port, path)


def _events(response):
    """The JSON objects of a server-sent event stream, up to `data: [DONE]` (or its end)."""
    for line in response:
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            yield DONE  # (ends a row that no chunk gave a finish_reason, as "stop")
            return
        try:
            event = json.loads(data)
        except ValueError:
            continue
        if isinstance(event, dict):
            yield event


def _logprobs(value) -> list[float]:
    """The chosen tokens' log-probabilities in a chunk: OpenAI's `token_logprobs` (vLLM, llama-cpp-python) or
    llama.cpp's `content[].logprob`."""
    if not isinstance(value, dict):
        return []
    if isinstance(value.get("token_logprobs"), list):
        return [float(v) for v in value["token_logprobs"] if isinstance(v, (int, float))]
    if isinstance(value.get("content"), list):
        return [float(t["logprob"]) for t in value["content"]
                if isinstance(t, dict) and isinstance(t.get("logprob"), (int, float))]
    return []


def _refusal(response) -> _Refused:
    raw = response.read().decode("utf-8", "replace")
    retry = response.getheader("Retry-After", "")
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    message = None
    if isinstance(body, dict):
        error = body.get("error", body.get("detail", body.get("message")))
        if isinstance(error, dict):
            error = error.get("message", error)
        if isinstance(error, list) and error and isinstance(error[0], dict):  # (FastAPI's validation detail)
            error = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg', '')}" for e in error[:3])
        message = error
    return _Refused(response.status, _one_line(message or raw or "no detail"), raw,
                    float(retry) if retry.replace(".", "", 1).isdigit() else None)


def _refuses_token_ids(refused: _Refused) -> bool:
    """A refusal that wants the prompt as a string, to a prompt of token ids: the server takes text only
    (llama-cpp-python: "Input should be a valid string", as a 500 from its own error handler; TGI: "expected a
    string"; an older sc2 serve). Not a prompt refused for its length (vLLM: "maximum context length")."""
    message = str(refused).lower()
    return refused.status in (400, 422, 500) and "prompt" in message and "string" in message


def _one_line(message) -> str:
    return " ".join(str(message).split())[:300]


def _count(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
