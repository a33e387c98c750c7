"""The client side of `sc2 bench serve`: one streamed llama.cpp `/infill` request, timed as an editor sees it.

Plain `http.client` (the benchmark needs no HTTP library, and it keeps the client's own work small next to the
server's on a machine of two cores). A stream is server-sent events: `data: {json}` lines, the pieces of the middle
(`content`) and then a last event with `stop: true` that carries llama.cpp's numbers (`tokens_evaluated`, and
`timings` with `prompt_n`, `cache_n`, `prompt_ms`, `predicted_n`, `predicted_ms`). sc2 and llama.cpp's
`llama-server` both answer this way, so one client measures both.

Two times to first token: when the first piece of text arrives (what a streaming editor can show), and when the
first token was made as seen from the client (`Reply.first_token_s`); they differ for sc2, whose middle filter
releases a line only once it is whole.
"""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


class RequestFailed(RuntimeError):
    """The server answered with an error status, or the stream broke off."""


@dataclass
class Reply:
    first_s: float | None  # request sent -> first piece of the middle (None: the middle was empty)
    total_s: float  # request sent -> the last event
    content: str
    final: dict  # the last event: llama.cpp's numbers

    def timing(self, key: str):
        return (self.final.get("timings") or {}).get(key)

    @property
    def first_token_s(self) -> float:
        """Request sent -> first token made, on the client's clock: the end less the server's decode time after
        its first token (sc2 streams the middle a whole line at a time, so its first piece can come much later
        than its first token; this counts the HTTP, tokenizing and queueing around the prompt all the same)."""
        decode_ms = self.timing("predicted_ms")
        estimate = self.total_s - decode_ms / 1000 if isinstance(decode_ms, (int, float)) else self.total_s
        return min(estimate, self.first_s) if self.first_s is not None else estimate

    def record(self) -> dict:
        """What the JSON document keeps of one request."""
        return {"first_token_s": self.first_token_s, "first_text_s": self.first_s, "total_s": self.total_s,
                "prompt_tokens": self.final.get("tokens_evaluated"), "evaluated": self.timing("prompt_n"),
                "reused": self.timing("cache_n"), "prompt_ms": self.timing("prompt_ms"),
                "predicted": self.timing("predicted_n"), "predicted_ms": self.timing("predicted_ms"),
                "content": self.content}


def infill_body(prefix: str, suffix: str, max_tokens: int, cache_prompt: bool = True) -> dict:
    """A greedy llama.cpp /infill request (the fields llama.vim sends that matter here)."""
    return {"input_prefix": prefix, "input_suffix": suffix, "input_extra": [], "prompt": "", "n_predict": max_tokens,
            "temperature": 0.0, "top_k": 1, "samplers": ["top_k"], "stream": True, "cache_prompt": cache_prompt}


def stream_infill(url: str, body: dict, timeout: float = 600.0) -> Reply:
    """POST `body` to `url`/infill as a stream; its timings, measured from the moment the request is sent."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    data = json.dumps(body).encode("utf-8")
    try:
        started = time.perf_counter()
        connection.request("POST", "/infill", data, {"Content-Type": "application/json"})
        response = connection.getresponse()
        if response.status != 200:
            raise RequestFailed(f"/infill answered {response.status}: {response.read()[:300].decode(errors='replace')}")
        first, pieces, final = None, [], None
        while final is None:
            line = response.readline()
            if not line:
                raise RequestFailed("/infill's stream ended before its last event")
            if not line.startswith(b"data:"):
                continue  # blank separators, `:` pings
            event = json.loads(line[5:])
            if "error" in event:
                raise RequestFailed(f"/infill failed mid-stream: {event['error']}")
            if event.get("content"):
                if first is None:
                    first = time.perf_counter() - started
                pieces.append(event["content"])
            if event.get("stop"):
                final = event
        return Reply(first, time.perf_counter() - started, "".join(pieces), final)
    except (OSError, http.client.HTTPException, ValueError) as err:
        raise RequestFailed(f"/infill at {url}: {err}") from None
    finally:
        connection.close()
