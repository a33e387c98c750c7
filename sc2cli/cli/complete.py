"""`sc2 complete`: continue a prompt, streaming the completion to stdout.

Examples:
  sc2 complete "def fibonacci(n):"
  cat script.py | sc2 complete --max-new-tokens 64
  sc2 complete -n 3 --temperature 0.8 --seed 1 --json "import numpy as np"
"""

from __future__ import annotations

import sys
import time
from typing import Annotated, Optional

import typer

from ..errors import UsageError
from . import common, output
from .options import (
    DeviceOpt, DtypeOpt, IgnoreEosOpt, JsonOpt, MaxNewTokensOpt, MinPOpt, ModelOpt, NoStreamOpt, NoTruncateOpt,
    DecodeOpt, NumSamplesOpt, OfflineOpt, PromptLookupOpt, QuantizeOpt, RepetitionPenaltyOpt, RevisionOpt, SeedOpt,
    StopOpt, TemperatureOpt, TopKOpt,
    TopPOpt,
)


def complete(
    prompt: Annotated[Optional[str], typer.Argument(
        help="Text to continue; '-' or nothing reads stdin.", show_default=False)] = None,
    model: ModelOpt = None,
    revision: RevisionOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    quantize: QuantizeOpt = "none",
    decode: DecodeOpt = "auto",
    prompt_lookup: PromptLookupOpt = None,
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
        help="auto | free | block | line: where the completion ends. block: when the code leaves the block the "
        "prompt's last line opens or sits in; line: at the end of the line; free: only at end-of-text, a stop "
        "or the token limit. auto: block after a line that opens one (def f():), else free.")] = "auto",
) -> None:
    """Continue PROMPT with the model and stream the completion to stdout."""
    common.check_counts(max_new_tokens, num_samples)
    if mode not in ("auto", "free", "block", "line"):
        raise UsageError(f"--mode must be auto, free, block or line (got {mode!r})")
    sampling = common.sampling_params(temperature, top_k, top_p, min_p, repetition_penalty, seed)
    common.check_prompt_lookup(prompt_lookup, sampling, num_samples)
    text = common.read_text_input(prompt)
    loaded = common.load_model(model, revision, device, dtype, offline, quantize=quantize)
    from ..healing import split_trailing_whitespace

    body, owed = split_trailing_whitespace(text)  # healed: generated again, not printed (see healing.py)
    ids = loaded.tokenizer.encode(body)
    config = loaded.model.config
    ids = common.fit_prompt(ids, config.max_position_embeddings, max_new_tokens, truncate=not no_truncate)
    run = run_generation(loaded, [ids], sampling, max_new_tokens, stop or [], num_samples, ignore_eos,
                         stream_text=not (no_stream or json_out or num_samples > 1),
                         decode=common.decode_mode(decode, loaded), prompt_lookup=prompt_lookup,
                         text_filter=scope_filter(mode, text), heal=owed)
    if json_out:
        output.write_json(completion_json(loaded, run, [len(ids)]))
    elif num_samples > 1 or no_stream:
        for i, c in enumerate(run.completions):
            if num_samples > 1:
                output.write(f"{'' if i == 0 else chr(10)}--- sample {i + 1} ---\n")
            output.write(c.text)
        output.write("\n" if num_samples > 1 else "")
    if not json_out and sys.stdout.isatty():
        output.write("\n")  # end the line for a person at a terminal; pipes get the exact text


class GenerationRun:
    def __init__(self, completions, seed: int, first_token_s: float, decode_s: float) -> None:
        self.completions = completions
        self.seed = seed
        self.first_token_s = first_token_s
        self.decode_s = decode_s

    @property
    def completion_tokens(self) -> int:
        return sum(len(c.tokens) for c in self.completions)


def run_generation(loaded, prompts, sampling, max_new_tokens, stop_strings, num_samples, ignore_eos,
                   stream_text: bool, extra_stop_ids=frozenset(), decode: str = "auto",
                   prompt_lookup: bool | None = None, text_filter=None, heal: str = "") -> GenerationRun:
    """Generate for `prompts`, optionally streaming row 0's text to stdout, with timings."""
    from ..engine import StopConditions, generate
    from ..sampling import make_generator
    from ..tokenizer import boundary_token_ids

    model, tokenizer = loaded.model, loaded.tokenizer
    stop_ids = frozenset() if ignore_eos else boundary_token_ids(tokenizer) | extra_stop_ids
    conditions = StopConditions(token_ids=stop_ids, strings=tuple(stop_strings), max_new_tokens=max_new_tokens,
                                context_limit=model.config.max_position_embeddings, text_filter=text_filter)
    generator = make_generator(sampling.seed, model.device)
    first = None

    def on_step(step) -> None:
        nonlocal first
        if first is None:
            first = time.perf_counter()
        if stream_text and step.row == 0:
            output.write(step.text)

    started = time.perf_counter()
    completions = generate(model, tokenizer, prompts, sampling, conditions, num_samples, generator=generator,
                           on_step=on_step, prompt_lookup=prompt_lookup, decode=decode, heal=heal)
    end = time.perf_counter()
    first = first or end
    return GenerationRun(completions, generator.initial_seed(), first - started, end - first)


def scope_filter(mode: str, prompt_text: str):
    """The per-row text filter that ends a completion at its scope (None for free text): the same line/block
    rules as `sc2 infill`, with the prompt as the code before the cursor and nothing after it."""
    from .. import infill as fill

    if mode == "auto":
        last = prompt_text.rstrip().rsplit("\n", 1)[-1]
        mode = "block" if last.endswith((":", "{")) else "free"
    if mode == "free":
        return None
    style = fill.IndentStyle.detect(prompt_text[-4000:])
    return lambda row: fill.MiddleFilter(mode, prompt_text, "", style)


def completion_json(loaded, run: GenerationRun, prompt_tokens: list[int]) -> dict:
    decoded_after_first = max(0, run.completion_tokens - len(run.completions))
    return {
        "model": loaded.name,
        "choices": [
            {"index": c.row, "text": c.text, "tokens": c.tokens, "finish_reason": c.finish_reason,
             "logprob": c.logprob}
            for c in run.completions
        ],
        "usage": {"prompt_tokens": sum(prompt_tokens), "completion_tokens": run.completion_tokens},
        "timings": {
            "load_s": round(loaded.load_seconds, 4),
            "time_to_first_token_s": round(run.first_token_s, 4),
            "tokens_per_s": round(decoded_after_first / run.decode_s, 2) if run.decode_s > 0 else None,
        },
        "seed": run.seed,
    }
