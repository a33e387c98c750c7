"""What every protocol's replies share: compact JSON (llama.vim reads `"content":"` with no space), server-sent
events, newline-delimited JSON, and the numbers of a finished run."""

from __future__ import annotations

import json
from dataclasses import dataclass

from starlette.responses import Response


def dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


class CompactJSON(Response):
    media_type = "application/json"

    def render(self, content) -> bytes:
        return dumps(content).encode("utf-8")


def sse(obj) -> str:
    return f"data: {dumps(obj)}\n\n"


def ndjson(obj) -> str:
    return dumps(obj) + "\n"


@dataclass
class Usage:
    """A finished run's numbers, as every protocol reports them."""

    prompt_tokens: int
    reused_tokens: int  # of the prompt, kept from the slot's cache (not evaluated)
    completion_tokens: int
    prompt_s: float  # until the first token (prefill and one step)
    decode_s: float

    @property
    def evaluated_tokens(self) -> int:
        return self.prompt_tokens - self.reused_tokens

    @classmethod
    def of(cls, run, prompt_tokens: int) -> Usage:
        return cls(prompt_tokens, run.reused_tokens, run.completion_tokens, run.first_token_s, run.decode_s)


def finish_reason(completion, limited: bool) -> str:
    """OpenAI's finish_reason: "stop" at the end of text or a stop string, "length" at a limit."""
    return "length" if limited or completion.finish_reason == "length" else "stop"
