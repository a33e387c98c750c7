"""`sc2 complete`: continue a prompt, streaming the completion to stdout.

Examples:
  sc2 complete "def fibonacci(n):"
  cat script.py | sc2 complete --max-new-tokens 64
  sc2 complete -n 3 --temperature 0.8 --seed 1 --json "import numpy as np"
"""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from . import common, output
from .options import (
    SAMPLING_PANEL, BackendOpt, DecodeOpt, DeviceOpt, DtypeOpt, IgnoreEosOpt, JsonOpt, LegacyLookupOpt,
    MaxNewTokensOpt, MinPOpt, ModelOpt,
    NoStreamOpt, NoTruncateOpt, NumSamplesOpt, OfflineOpt, PromptLookupOpt, QuantizeOpt, RepetitionPenaltyOpt,
    RevisionOpt, SeedOpt, ServerOpt, StopOpt, TemperatureOpt, TopKOpt, TopPOpt,
)


def complete(
    prompt: Annotated[Optional[str], typer.Argument(
        help="Text to continue; '-' or nothing reads stdin.", show_default=False, metavar="PROMPT")] = None,
    model: ModelOpt = None,
    server: ServerOpt = None,
    backend: BackendOpt = "sc2",
    revision: RevisionOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    quantize: QuantizeOpt = "none",
    decode: DecodeOpt = "auto",
    prompt_lookup: PromptLookupOpt = None,
    legacy_lookup: LegacyLookupOpt = None,
    offline: OfflineOpt = False,
    max_new_tokens: MaxNewTokensOpt = 128,
    temperature: TemperatureOpt = 0.0,
    top_k: TopKOpt = 0,
    top_p: TopPOpt = 1.0,
    min_p: MinPOpt = 0.0,
    repetition_penalty: RepetitionPenaltyOpt = 1.0,
    seed: SeedOpt = None,
    stop: StopOpt = None,
    num_samples: NumSamplesOpt = 1,
    ignore_eos: IgnoreEosOpt = False,
    no_stream: NoStreamOpt = False,
    json_out: JsonOpt = False,
    no_truncate: NoTruncateOpt = False,
    mode: Annotated[str, typer.Option(
        help="auto | free | block | line: where it ends (auto: block after `def f():`, else free).",
        rich_help_panel=SAMPLING_PANEL, metavar="NAME")] = "auto",
) -> None:
    """Continue PROMPT with the model and stream the completion to stdout."""
    from ..completion import CompletionRequest, complete as run_completion, plan

    job = common.generation_job(max_new_tokens, num_samples, temperature, top_k, top_p, min_p, repetition_penalty,
                                seed, stop, ignore_eos, legacy_lookup if prompt_lookup is None else prompt_lookup,
                                decode)
    if num_samples > 1 and job.sampling.greedy:
        output.warning("-n > 1 with greedy decoding gives identical samples; add --temperature to vary them")
    request = CompletionRequest(common.read_text_input(prompt), mode=mode, truncate=not no_truncate, job=job)
    streaming = not (no_stream or json_out or num_samples > 1)
    on_text = output.write if streaming else None
    chosen = common.choose_backend(server, backend, model, revision, offline, device, dtype, quantize)
    if chosen is None:
        from ..serve import client

        result, served = client.complete(server, request, on_text=on_text)
        warn_about_fit(result.prompt_tokens, result.tokens_cut, served.context, max_new_tokens)
        name, load_s = served.name, served.load_seconds
    else:
        tokenizer, config, start = chosen
        planned = plan(request, tokenizer, config)
        warn_about_fit(len(planned.ids), planned.tokens_cut, config.max_position_embeddings, max_new_tokens)
        runner = start()
        result = run_completion(request, runner, on_text=on_text, planned=planned)
        name, load_s = runner.name, runner.loaded.load_seconds if runner.loaded else 0.0
    if json_out:
        output.write_json(completion_json(name, load_s, result))
    elif num_samples > 1 or no_stream:
        for i, c in enumerate(result.completions):
            if num_samples > 1:
                output.write(f"{'' if i == 0 else chr(10)}--- sample {i + 1} ---\n")
            output.write(c.text)
        output.write("\n" if num_samples > 1 else "")
    if not json_out and sys.stdout.isatty():
        output.write("\n")  # end the line for a person at a terminal; pipes get the exact text


def warn_about_fit(prompt_tokens: int, tokens_cut: int, context: int, max_new_tokens: int) -> None:
    if tokens_cut:
        output.warning(f"prompt cut from the left: {prompt_tokens + tokens_cut} tokens, kept the last "
                       f"{prompt_tokens} of a {context}-token context")
    room = context - prompt_tokens
    if max_new_tokens > room:  # generation stops where the context ends: say so rather than cap it silently
        output.warning(f"--max-new-tokens {max_new_tokens} does not fit: the {prompt_tokens}-token prompt leaves "
                       f"room for {room} in the model's {context}-token context, so at most {room} tokens will be "
                       "generated")


def completion_json(name: str, load_seconds: float, result) -> dict:
    run = result.run
    return {
        "model": name,
        "choices": [
            {"index": c.row, "text": c.text, "tokens": c.tokens, "finish_reason": c.finish_reason,
             "logprob": c.logprob}
            for c in run.completions
        ],
        "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": run.completion_tokens},
        "timings": {
            "load_s": round(load_seconds, 4),
            "time_to_first_token_s": round(run.first_token_s, 4),
            "tokens_per_s": round(run.tokens_per_s, 2) if run.tokens_per_s is not None else None,
        },
        "seed": run.seed,
    }
