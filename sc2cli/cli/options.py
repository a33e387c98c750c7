"""Options shared by several commands, defined once (names read like prose in command signatures), grouped into
help panels so that `--help` reads well in an 80-column terminal."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

MODEL_PANEL = "Model and device"
SAMPLING_PANEL = "Sampling and stopping"
OUTPUT_PANEL = "Output"

ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", help="Hub id, checkpoint folder or sc2-tiny (the shipped model). Default: $SC2_MODEL, "
    "then `sc2 config`.", show_default=False, rich_help_panel=MODEL_PANEL)]
RevisionOpt = Annotated[Optional[str], typer.Option(help="Hub branch, tag or commit.", show_default=False,
                                                    rich_help_panel=MODEL_PANEL)]
DeviceOpt = Annotated[Optional[str], typer.Option(
    help="auto | cpu | cuda | cuda:N | mps.", show_default=False, rich_help_panel=MODEL_PANEL)]
DtypeOpt = Annotated[Optional[str], typer.Option(
    help="auto | float32 | bfloat16 | float16.", show_default=False, rich_help_panel=MODEL_PANEL)]
OfflineOpt = Annotated[bool, typer.Option("--offline", help="Use the local cache only.", rich_help_panel=MODEL_PANEL)]
QuantizeOpt = Annotated[str, typer.Option(
    help="none | int8 (int8: about half the memory traffic; slightly other numbers).", rich_help_panel=MODEL_PANEL)]
DecodeOpt = Annotated[str, typer.Option(
    help="auto | eager | static | cuda-graph | compile: how each step runs.", rich_help_panel=MODEL_PANEL)]
PromptLookupOpt = Annotated[Optional[bool], typer.Option(
    "--prompt-lookup/--no-prompt-lookup", help="Check drafts copied from the prompt (the same tokens, sooner). "
    "Default: on for one greedy completion.", show_default=False, rich_help_panel=MODEL_PANEL)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.",
                                       rich_help_panel=OUTPUT_PANEL)]
NoStreamOpt = Annotated[bool, typer.Option("--no-stream", help="Print the completion only when it is done.",
                                           rich_help_panel=OUTPUT_PANEL)]

MaxNewTokensOpt = Annotated[int, typer.Option("--max-new-tokens", help="Most tokens to generate.",
                                              rich_help_panel=SAMPLING_PANEL)]
TemperatureOpt = Annotated[float, typer.Option(help="Sampling temperature; 0 is greedy.",
                                               rich_help_panel=SAMPLING_PANEL)]
TopKOpt = Annotated[int, typer.Option("--top-k", help="Sample among the k likeliest tokens (0: off).",
                                      rich_help_panel=SAMPLING_PANEL)]
TopPOpt = Annotated[float, typer.Option("--top-p", help="Nucleus mass in (0, 1] (1: off).",
                                        rich_help_panel=SAMPLING_PANEL)]
MinPOpt = Annotated[float, typer.Option("--min-p", help="Drop tokens below this share of the top one.",
                                        rich_help_panel=SAMPLING_PANEL)]
RepetitionPenaltyOpt = Annotated[float, typer.Option("--repetition-penalty", help="CTRL-style penalty (1: off).",
                                                     rich_help_panel=SAMPLING_PANEL)]
SeedOpt = Annotated[Optional[int], typer.Option(help="Random seed, for reproducible sampling.", show_default=False,
                                                rich_help_panel=SAMPLING_PANEL)]
StopOpt = Annotated[Optional[list[str]], typer.Option(
    "--stop", help="Stop at this text (repeatable; \\n, \\t and \\\\ are escapes); not printed.", show_default=False,
    rich_help_panel=SAMPLING_PANEL)]
NumSamplesOpt = Annotated[int, typer.Option("--num-samples", "-n", help="How many completions to generate.",
                                            rich_help_panel=SAMPLING_PANEL)]
IgnoreEosOpt = Annotated[bool, typer.Option("--ignore-eos", help="Do not stop at end-of-text (benchmarks).",
                                            rich_help_panel=SAMPLING_PANEL)]
NoTruncateOpt = Annotated[bool, typer.Option(
    "--no-truncate", help="Fail instead of cutting a prompt that does not fit.", rich_help_panel=SAMPLING_PANEL)]
