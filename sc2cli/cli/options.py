"""Options shared by several commands, defined once (names read like prose in command signatures), grouped into
help panels so that `--help` reads well in an 80-column terminal."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

MODEL_PANEL = "Model and device"
SAMPLING_PANEL = "Sampling and stopping"
OUTPUT_PANEL = "Output"
SPEED_PANEL = "Speed (the same tokens)"

ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", help="Hub id, checkpoint folder or sc2-tiny (the shipped model). Default: $SC2_MODEL, "
    "then `sc2 config`.", show_default=False, rich_help_panel=MODEL_PANEL, metavar="REF")]
RevisionOpt = Annotated[Optional[str], typer.Option(help="Hub branch, tag or commit.", show_default=False,
                                                    rich_help_panel=MODEL_PANEL, metavar="REV")]
DeviceOpt = Annotated[Optional[str], typer.Option(
    help="auto | cpu | cuda | cuda:N | mps.", show_default=False, rich_help_panel=MODEL_PANEL, metavar="NAME")]
DtypeOpt = Annotated[Optional[str], typer.Option(
    help="auto | float32 | bfloat16 | float16.", show_default=False, rich_help_panel=MODEL_PANEL, metavar="NAME")]
ServerOpt = Annotated[Optional[str], typer.Option(
    "--server", envvar="SC2_SERVER", help="Run on a warm `sc2 serve` at this URL (its model; no torch here). "
    "SC2_API_KEY is sent as its key.", show_default=False, show_envvar=True, rich_help_panel=MODEL_PANEL,
    metavar="URL")]
BackendOpt = Annotated[str, typer.Option(
    "--backend", envvar="SC2_BACKEND", help="sc2 | openai: any /v1/completions ($SC2_BACKEND).",
    show_default=False, show_envvar=False, rich_help_panel=MODEL_PANEL, metavar="NAME")]
OfflineOpt = Annotated[bool, typer.Option("--offline", help="Use the local cache only.", rich_help_panel=MODEL_PANEL, metavar="")]
QuantizeOpt = Annotated[str, typer.Option(
    help="none | int8: about half the memory traffic (not the same tokens).", rich_help_panel=SPEED_PANEL, metavar="NAME")]
DecodeOpt = Annotated[str, typer.Option(
    help="auto | eager | static | cuda-graph | compile: how each step runs.", rich_help_panel=SPEED_PANEL, metavar="NAME")]
PromptLookupOpt = Annotated[Optional[bool], typer.Option(
    "--lookup/--no-lookup", help="Prompt lookup: check drafts copied from the prompt (the same tokens, sooner). "
    "Default: on for one greedy completion.", show_default=False, rich_help_panel=SPEED_PANEL, metavar="")]
# The first spelling of --lookup, still accepted (scripts use it); hidden so that --help stays narrow.
LegacyLookupOpt = Annotated[Optional[bool], typer.Option("--prompt-lookup/--no-prompt-lookup", hidden=True,
                                                         show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.",
                                       rich_help_panel=OUTPUT_PANEL, metavar="")]
NoStreamOpt = Annotated[bool, typer.Option("--no-stream", help="Print the completion only when it is done.",
                                           rich_help_panel=OUTPUT_PANEL, metavar="")]

MaxNewTokensOpt = Annotated[int, typer.Option("--max-new-tokens", help="Most tokens to generate.",
                                              rich_help_panel=SAMPLING_PANEL, metavar="INT")]
TemperatureOpt = Annotated[float, typer.Option(help="Sampling temperature (default 0: greedy).", show_default=False,
                                               rich_help_panel=SAMPLING_PANEL, metavar="FLOAT")]
TopKOpt = Annotated[int, typer.Option("--top-k", help="Keep the k likeliest tokens (default 0: all).", show_default=False,
                                      rich_help_panel=SAMPLING_PANEL, metavar="INT")]
TopPOpt = Annotated[float, typer.Option("--top-p", help="Nucleus mass in (0, 1] (default 1: off).", show_default=False,
                                        rich_help_panel=SAMPLING_PANEL, metavar="FLOAT")]
MinPOpt = Annotated[float, typer.Option("--min-p", help="Drop tokens below this share of the top one.", show_default=False,
                                        rich_help_panel=SAMPLING_PANEL, metavar="FLOAT")]
RepetitionPenaltyOpt = Annotated[float, typer.Option("--repetition-penalty", help="CTRL-style (default 1: off).", show_default=False,
                                                     rich_help_panel=SAMPLING_PANEL, metavar="FLOAT")]
SeedOpt = Annotated[Optional[int], typer.Option(help="Random seed, for reproducible sampling.", show_default=False,
                                                rich_help_panel=SAMPLING_PANEL, metavar="INT")]
StopOpt = Annotated[Optional[list[str]], typer.Option(
    "--stop", help="Stop at this text (repeatable; \\n, \\t and \\\\ are escapes); not printed.", show_default=False,
    rich_help_panel=SAMPLING_PANEL, metavar="TEXT")]
NumSamplesOpt = Annotated[int, typer.Option("--num-samples", "-n", help="How many completions to generate.",
                                            rich_help_panel=OUTPUT_PANEL, metavar="N")]
IgnoreEosOpt = Annotated[bool, typer.Option("--ignore-eos", help="Do not stop at end-of-text (benchmarks).",
                                            rich_help_panel=SAMPLING_PANEL, metavar="")]
NoTruncateOpt = Annotated[bool, typer.Option(
    "--no-truncate", help="Fail instead of cutting a prompt that does not fit.", rich_help_panel=SAMPLING_PANEL, metavar="")]
