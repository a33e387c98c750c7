"""Options shared by several commands, defined once (names read like prose in command signatures)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", help="Hub repo id (bigcode/starcoder2-3b), checkpoint folder, or 'sc2-tiny' (shipped). "
    "Default: $SC2_MODEL, then `sc2 config`.", show_default=False)]
RevisionOpt = Annotated[Optional[str], typer.Option(help="Hub revision: branch, tag or commit.", show_default=False)]
DeviceOpt = Annotated[Optional[str], typer.Option(
    help="auto | cpu | cuda | cuda:N | mps (auto: CUDA, then MPS, then CPU).", show_default=False)]
DtypeOpt = Annotated[Optional[str], typer.Option(
    help="auto | float32 | bfloat16 | float16 (auto: fast and safe for the device).", show_default=False)]
OfflineOpt = Annotated[bool, typer.Option("--offline", help="Never touch the network; use the local cache only.")]
QuantizeOpt = Annotated[str, typer.Option(
    help="none | int8: int8 weight-only quantization (about half the memory traffic per token; slightly "
    "different numbers).")]
DecodeOpt = Annotated[str, typer.Option(
    help="auto | eager | static | cuda-graph | compile: how each token's step runs (auto: replayed from a CUDA "
    "graph on CUDA, the static step on CPU).")]
PromptLookupOpt = Annotated[Optional[bool], typer.Option(
    "--prompt-lookup/--no-prompt-lookup", help="Check drafts copied from the prompt, several tokens per pass "
    "(the same tokens, sooner). Default: on for one greedy completion, except under a CUDA graph.",
    show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]

MaxNewTokensOpt = Annotated[int, typer.Option("--max-new-tokens", help="Most tokens to generate.")]
TemperatureOpt = Annotated[float, typer.Option(help="Sampling temperature; 0 means greedy.")]
TopKOpt = Annotated[int, typer.Option("--top-k", help="Sample from the k most likely tokens (0: off).")]
TopPOpt = Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass in (0, 1] (1: off).")]
MinPOpt = Annotated[float, typer.Option("--min-p", help="Drop tokens below this fraction of the top probability.")]
RepetitionPenaltyOpt = Annotated[float, typer.Option("--repetition-penalty", help="CTRL-style penalty (1: off).")]
SeedOpt = Annotated[Optional[int], typer.Option(help="Random seed, for reproducible sampling.", show_default=False)]
StopOpt = Annotated[Optional[list[str]], typer.Option(
    "--stop", help="Stop when this text appears (repeatable); the stop text is not printed.", show_default=False)]
NumSamplesOpt = Annotated[int, typer.Option("--num-samples", "-n", help="Number of completions to generate.")]
IgnoreEosOpt = Annotated[bool, typer.Option("--ignore-eos", help="Do not stop at end-of-text (for benchmarks).")]
NoStreamOpt = Annotated[bool, typer.Option("--no-stream", help="Print the completion only when it is done.")]
NoTruncateOpt = Annotated[bool, typer.Option(
    "--no-truncate", help="Fail instead of cutting a prompt that does not fit the context.")]
