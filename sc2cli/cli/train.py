"""`sc2 train`: train a StarCoder2 model from scratch, or fine-tune a checkpoint, on a folder of source files.

Examples:
  sc2 train stdlib --out runs/sc2-tiny                 # the shipped model's recipe (`make tiny-model`): the defaults
  sc2 train ~/code/myproject --init bigcode/starcoder2-3b --out runs/mine --max-steps 500 --lr 2e-5
"""

from __future__ import annotations

import inspect
from typing import Annotated, Optional

import typer

from ..errors import InputError, UsageError
from . import output

# The shipped model's recipe is these defaults: `sc2 train stdlib --out runs/sc2-tiny` is what `make tiny-model`
# runs and what the README quotes (tests/test_train_config_defects.py checks that the three agree).
RECIPE_MAX_STEPS = 5000
# Options named otherwise than the trainer's setting (the others are the setting's name with dashes).
OPTIONS = {"num_hidden_layers": "layers", "num_attention_heads": "heads", "num_key_value_heads": "kv_heads",
           "max_position_embeddings": "max_positions"}


def train(
    data: Annotated[str, typer.Argument(help="Folder of source files, a corpus folder (`make corpus`: held out by "
                                        "package), or 'stdlib' (this Python's standard library).")],
    out: Annotated[str, typer.Option("--out", "-o", help="Run folder: checkpoint, optimizer and state.")],
    init: Annotated[Optional[str], typer.Option(
        help="Checkpoint to fine-tune (folder or Hub id); default: train from scratch.", show_default=False)] = None,
    max_steps: Annotated[int, typer.Option("--max-steps", help="Optimizer steps in total.")] = RECIPE_MAX_STEPS,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Sequences per micro-batch.")] = 16,
    grad_accum: Annotated[int, typer.Option("--grad-accum", help="Micro-batches per optimizer step.")] = 1,
    seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per training sequence.")] = 512,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 1e-3,
    warmup_steps: Annotated[int, typer.Option("--warmup-steps")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the data order, FIM choices and initialisation.")] = 0,
    save_every: Annotated[int, typer.Option("--save-every", help="Checkpoint every N steps.")] = 100,
    eval_every: Annotated[int, typer.Option("--eval-every", help="Held-out loss every N steps.")] = 100,
    snapshot_every: Annotated[int, typer.Option("--snapshot-every", help="Keep a copy of the checkpoint every N "
                                                "steps in OUT/snapshots/step-N (0: never).")] = 0,
    hidden_size: Annotated[int, typer.Option("--hidden-size")] = 384,
    layers: Annotated[int, typer.Option("--layers")] = 8,
    heads: Annotated[int, typer.Option("--heads")] = 6,
    kv_heads: Annotated[int, typer.Option("--kv-heads")] = 2,
    intermediate_size: Annotated[int, typer.Option("--intermediate-size")] = 1536,
    sliding_window: Annotated[int, typer.Option("--sliding-window")] = 512,
    max_positions: Annotated[int, typer.Option("--max-positions", help="Context length of the model.")] = 2048,
    vocab_size: Annotated[int, typer.Option("--vocab-size", help="Size of the BPE trained from the data.")] = 8192,
    restart: Annotated[bool, typer.Option("--restart", help="Ignore a saved run in --out and start over.")] = False,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads (default: all).", show_default=False)] = None,
    device: Annotated[str, typer.Option(help="cpu | cuda | cuda:N | mps: where to compute (resumable across "
                                        "devices).")] = "cpu",
) -> None:
    """Train on DATA and write a checkpoint that sc2 and transformers load; a stopped run resumes exactly."""
    if snapshot_every < 0:
        raise UsageError(f"--snapshot-every must be 0 or more (got {snapshot_every})")
    for name, value in (("max-steps", max_steps), ("batch-size", batch_size), ("grad-accum", grad_accum),
                        ("seq-len", seq_len), ("save-every", save_every), ("eval-every", eval_every)):
        if value < 1:
            raise UsageError(f"--{name} must be at least 1 (got {value})")
    if not lr > 0:
        raise UsageError(f"--lr must be positive (got {lr})")
    import torch

    from ..train.trainer import ModelShape, TrainSettings
    from ..train.trainer import train as run_training

    if threads:
        torch.set_num_threads(threads)
    from ..devices import resolve_device

    device = str(resolve_device(device))
    init_dir = None
    if init:
        from ..hub import resolve

        init_dir = str(resolve(init))
    shape = ModelShape(hidden_size=hidden_size, num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=kv_heads, intermediate_size=intermediate_size,
                       sliding_window=sliding_window, max_position_embeddings=max_positions, vocab_size=vocab_size)
    settings = TrainSettings(data=data, out=out, init=init_dir, seq_len=seq_len, batch_size=batch_size,
                             grad_accum=grad_accum, max_steps=max_steps, lr=lr, warmup_steps=warmup_steps, seed=seed,
                             save_every=save_every, eval_every=eval_every, shape=shape, device=device,
                             snapshot_every=snapshot_every)
    try:
        with _progress(max_steps) as report:
            state = run_training(settings, resume=not restart, on_progress=report, on_note=output.warning)
    except InputError as err:
        raise _worded(err) from None
    last = state.history[-1] if state.history else None
    output.status(f"done: step {state.step}, {state.tokens_seen:,} tokens, {state.seconds / 60:.1f} min of training"
                  + (f", last loss {last[2]:.3f}" if last else ""))
    output.write(f"{out}\n")


def _option(name: str) -> str | None:
    """The option (or argument) of a trainer setting; None for settings the command does not offer."""
    if name == "data":
        return "DATA"
    option = OPTIONS.get(name, name)
    return f"--{option.replace('_', '-')}" if option in inspect.signature(train).parameters else None


def _worded(err: InputError) -> InputError:
    """A trainer error in this command's terms: its options for the trainer's setting names."""
    from ..train.trainer import SavedRunMismatch, label

    if isinstance(err, SavedRunMismatch):
        def setting(name, value):
            return f"{_option(name) or label(name)} {value}"

        started = " ".join(setting(name, saved) for name, saved, _ in err.differences)
        asked = " ".join(setting(name, value) for name, _, value in err.differences)
        return UsageError(f"--out: {err.out} holds a run started with {started}, not {asked}; a stopped run resumes "
                          f"only with the settings it started with: rerun with those, or start over with a new --out, "
                          f"by deleting {err.out}, or with --restart")
    if isinstance(err, UsageError) or not err.field:
        return err
    option = _option(err.field) or ""
    return InputError(str(err), field=option[2:].replace("-", "_") if option.startswith("--") else None)


class _progress:
    """A Rich progress bar on stderr with loss and tokens/s (plain lines when stderr is not a terminal)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.bar = None

    def __enter__(self):
        import sys

        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.live = sys.stderr.isatty()
        if self.live:
            self.bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                TimeRemainingColumn(), console=output.err_console())
            self.bar.start()
            self.task = self.bar.add_task("train", total=self.total, info="")
        return self.report

    def report(self, state, loss: float, tokens_per_s: float) -> None:
        row = state.history[-1]
        heldout = row[3] if len(row) > 3 else None  # measured on this step
        info = f"loss {loss:.3f}" + (f" held-out {heldout:.3f}" if heldout is not None else "") + f" {tokens_per_s:,.0f} tok/s"
        if self.live:
            self.bar.update(self.task, completed=state.step, info=info)
        elif heldout is not None or state.step % 10 == 0:
            output.status(f"step {state.step}/{self.total} tokens {state.tokens_seen:,} {info}")

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()
