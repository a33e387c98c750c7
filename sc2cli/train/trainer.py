"""Training and fine-tuning: a folder of source files in, a checkpoint in the reference layout out.

AdamW with linear warm-up and cosine decay, bf16 autocast (on CPU, or on the device given), gradient accumulation. The output folder always
holds a loadable checkpoint (config.json, model.safetensors, tokenizer.json) plus `optimizer.safetensors` and
`train_state.json`; data order is a pure function of (seed, epoch, row), so a stopped run resumes exactly.

Everything that cannot train (a shape StarCoder2 cannot have, sequences longer than the model's context, a saved
run asked to resume with other settings, an output path that is a file or someone else's folder) is refused before
anything is written, and a run that fails before its first checkpoint removes what it created.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sysconfig
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from . import data as trainset
from .bpe import check_vocab_size, train_bpe
from .corpus import is_corpus
from ..errors import InputError, Sc2Error
from ..files import atomic_write_bytes
from ..model import Starcoder2Config, Starcoder2ForCausalLM
from ..model.config import read_config
from ..tokenizer import Tokenizer

STATE_FILE = "train_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
# What a run folder holds, besides sharded weights (model-*-of-*.safetensors) and the temporary files of an
# interrupted write: a folder with anything else in it is not a run's, and no run writes there.
RUN_ENTRIES = {"config.json", "model.safetensors", "model.safetensors.index.json", "tokenizer.json", OPTIMIZER_FILE,
               STATE_FILE, "snapshots"}
# Settings a stopped run takes from the new request: they change how far it goes, where it computes and what it
# writes on the way, never the steps themselves. Every other setting is the saved run's, and asking for another
# value is refused (it would silently be ignored).
RESUMABLE = ("max_steps", "device", "snapshot_every", "save_every", "eval_every")
# Words for settings in messages (the command line names its own flags).
LABELS = {"data": "data", "init": "starting checkpoint", "seq_len": "sequence length", "batch_size": "batch size",
          "grad_accum": "gradient accumulation", "lr": "learning rate", "warmup_steps": "warm-up steps",
          "hidden_size": "hidden size", "num_hidden_layers": "layers", "num_attention_heads": "attention heads",
          "num_key_value_heads": "key-value heads", "intermediate_size": "intermediate size",
          "sliding_window": "sliding window", "max_position_embeddings": "positions", "vocab_size": "vocabulary size",
          "max_steps": "steps", "save_every": "steps between checkpoints", "eval_every": "steps between evaluations",
          "eval_rows": "evaluation rows"}


def label(name: str) -> str:
    return LABELS.get(name, name.replace("_", " "))


@dataclass
class ModelShape:
    """Architecture of a model trained from scratch (ignored when fine-tuning an existing checkpoint)."""

    hidden_size: int = 384
    num_hidden_layers: int = 8
    num_attention_heads: int = 6
    num_key_value_heads: int = 2
    intermediate_size: int = 1536
    sliding_window: int = 512
    max_position_embeddings: int = 2048
    vocab_size: int = 8192
    rope_theta: float = 100000.0


@dataclass
class TrainSettings:
    data: str
    out: str
    init: str | None = None  # a checkpoint folder to fine-tune; None trains from scratch
    seq_len: int = 512
    batch_size: int = 16
    grad_accum: int = 1
    max_steps: int = 1000
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 200
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    heldout_fraction: float = 0.05
    fim_rate: float = 0.5
    repo_name: str = "python/cpython"
    save_every: int = 100
    snapshot_every: int = 0  # also keep a copy of the checkpoint every N steps in out/snapshots/step-N (0: never)
    eval_every: int = 100
    eval_rows: int = 32
    autocast: bool = True
    device: str = "cpu"  # where the run computes; checkpoints are the same on any device
    shape: ModelShape = field(default_factory=ModelShape)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainSettings":
        data = dict(data)
        data["shape"] = ModelShape(**data.get("shape", {}))
        return cls(**data)


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    row: int = 0  # next row of the epoch's data
    tokens_seen: int = 0
    seconds: float = 0.0
    # [step, tokens_seen, train_loss], with the held-out loss as a fourth item on the steps that measured it
    # (never a null: without held-out data nothing is measured).
    history: list = field(default_factory=list)


class SavedRunMismatch(InputError):
    """The output folder holds a stopped run that was started with other settings than the ones asked for."""

    def __init__(self, out: Path, differences: list[tuple[str, object, object]]) -> None:
        self.out = out
        self.differences = differences  # (setting, the saved run's value, the value asked for)
        started = ", ".join(f"{label(name)} {saved}" for name, saved, _ in differences)
        asked = ", ".join(f"{label(name)} {value}" for name, _, value in differences)
        super().__init__(f"{out} holds a run started with {started}, not {asked}; a stopped run resumes only with "
                         f"the settings it started with: to train with these, use another output folder or delete "
                         f"{out}", field="out")


def keep_freed_memory() -> None:
    """Ask glibc to reuse freed memory instead of returning it to the OS: the big per-step buffers (logits,
    gradients) then skip the page faults of fresh mmaps, which makes CPU training about 20% faster."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-4, 0)  # M_MMAP_MAX: no mmap'd chunks
        libc.mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD: never trim the heap
    except (OSError, AttributeError):
        pass


def stdlib_dir() -> Path:
    """The standard library of the interpreter running the training (the shipped model's corpus)."""
    return Path(sysconfig.get_paths()["stdlib"])


def resolve_data_dir(data: str) -> Path:
    path = stdlib_dir() if data == "stdlib" else Path(data).expanduser()
    if not path.is_dir():
        raise InputError(f"training data folder {data} does not exist")
    return path


def learning_rate(step: int, s: TrainSettings) -> float:
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    progress = min(1.0, (step - s.warmup_steps) / max(1, s.max_steps - s.warmup_steps))
    return s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def model_config(shape: ModelShape, vocab_size: int, eos: int) -> Starcoder2Config:
    """The config of a model trained from scratch (ValueError naming the config field when it cannot be)."""
    fields = asdict(shape)
    fields["vocab_size"] = vocab_size
    return Starcoder2Config(
        **fields, hidden_act="gelu_pytorch_tanh", use_bias=True, tie_word_embeddings=True, bos_token_id=eos,
        eos_token_id=eos, initializer_range=0.02, architectures=["Starcoder2ForCausalLM"],
    )


def check_shape(shape: ModelShape) -> None:
    """Refuse a model StarCoder2 cannot have, in the shape's own terms (InputError naming the ModelShape field)."""
    for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                 "intermediate_size", "sliding_window", "max_position_embeddings"):
        value = getattr(shape, name)
        if value < 1:
            raise InputError(f"the model's {label(name)} must be at least 1, got {value}", field=name)
    check_vocab_size(shape.vocab_size)
    heads, kv_heads, hidden = shape.num_attention_heads, shape.num_key_value_heads, shape.hidden_size
    if heads % kv_heads:
        raise InputError(f"{heads} attention heads cannot share {kv_heads} key-value heads evenly: the attention "
                         f"heads must be a multiple of the key-value heads", field="num_key_value_heads")
    if hidden < heads:
        raise InputError(f"the hidden size ({hidden}) is smaller than the number of attention heads ({heads}), so "
                         f"the heads would have no width", field="hidden_size")
    width = hidden // heads
    if width % 2:
        raise InputError(f"each of the {heads} attention heads gets {width} of the {hidden} hidden dimensions, and "
                         f"rotary embeddings need an even number: use a multiple of {2 * heads}", field="hidden_size")
    try:
        model_config(shape, shape.vocab_size, eos=0)
    except ValueError as err:  # the limits the config itself checks (widths, layers, ...), in the shape's words
        message = str(err)
        named = re.match(r"config field '(\w+)'", message)
        name = named.group(1) if named and hasattr(shape, named.group(1)) else None
        raise InputError(message.replace("config field ", "the model's ", 1), field=name) from None


def check_settings(s: TrainSettings) -> None:
    """Refuse, before anything is read or written, settings that cannot train."""
    for name in ("seq_len", "batch_size", "grad_accum", "max_steps", "save_every", "eval_every", "eval_rows"):
        if getattr(s, name) < 1:
            raise InputError(f"the {label(name)} must be at least 1, got {getattr(s, name)}", field=name)
    for name in ("warmup_steps", "snapshot_every"):
        if getattr(s, name) < 0:
            raise InputError(f"the {label(name)} must be 0 or more, got {getattr(s, name)}", field=name)
    if not s.lr > 0:
        raise InputError(f"the learning rate must be positive, got {s.lr}", field="lr")
    if s.init:
        positions = read_config(Path(s.init)).max_position_embeddings
        where = f"the {positions} positions of the checkpoint {s.init}"
        fix = ""
        if not (Path(s.init) / "tokenizer.json").is_file():  # a tokenizer is trained, of the asked size
            check_vocab_size(s.shape.vocab_size)
    else:
        check_shape(s.shape)
        positions = s.shape.max_position_embeddings
        where = f"the model's context of {positions} positions"
        fix = f" or a model of at least {s.seq_len} positions"
    if s.seq_len > positions:
        raise InputError(f"training sequences of {s.seq_len} tokens do not fit {where}; use sequences of at most "
                         f"{positions} tokens{fix}", field="seq_len")


def _run_entry(name: str) -> bool:
    return (name in RUN_ENTRIES or name.endswith((".tmp", ".sc2tmp"))
            or (name.startswith("model-") and name.endswith(".safetensors")))


def check_out(out: Path) -> None:
    """The output path must be (or become) a folder that is empty or holds a run."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file, not a folder for the run; choose another path or move the file",
                         field="out")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"{out} cannot be a folder: {parent} is a file", field="out")
            break
    if out.is_dir() and not (out / STATE_FILE).is_file():
        others = sorted(entry.name for entry in out.iterdir() if not _run_entry(entry.name))
        if others:
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise InputError(f"{out} already holds other files ({shown}) and no training run; choose a new or empty "
                             f"folder for the run", field="out")


def _data_key(data: str) -> str:
    path = stdlib_dir() if data == "stdlib" else Path(data).expanduser()
    return str(path.resolve())


def differences(saved: TrainSettings, asked: TrainSettings) -> list[tuple[str, object, object]]:
    """(setting, saved, asked) for each setting the saved run keeps that was asked with another value."""
    a, b = asdict(saved), asdict(asked)
    found = []
    if _data_key(saved.data) != _data_key(asked.data):
        found.append(("data", saved.data, asked.data))
    for name in a:
        if name not in RESUMABLE and name not in ("data", "out", "shape") and a[name] != b[name]:
            found.append((name, a[name], b[name]))
    if saved.init is None:  # the shape is the checkpoint's when fine-tuning: the asked one was never used
        found += [(name, value, b["shape"][name]) for name, value in a["shape"].items() if value != b["shape"][name]]
    return found


def load_saved(out: Path) -> tuple[dict, TrainState]:
    path = out / STATE_FILE
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        return saved["settings"], TrainState(**saved["state"])
    except (ValueError, KeyError, TypeError) as err:
        raise Sc2Error(f"{path} is not a readable training state ({err}); delete {out} to start over") from None


class _NewPaths:
    """What a fresh run adds: the folders it creates for `out`, or the entries it adds to an existing `out`. A run
    that fails before its first checkpoint removes them (and nothing that was there before)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.top = None  # the highest folder the run will create; None when `out` exists
        for path in (out, *out.parents):
            if path.exists():
                break
            self.top = path
        self.before = set(os.listdir(out)) if self.top is None else set()
        self.checkpointed = False  # set once the run has saved a checkpoint: from then on it is resumable

    def remove(self) -> None:
        if self.top is not None:
            shutil.rmtree(self.top, ignore_errors=True)
            return
        if not self.out.is_dir():
            return
        for name in set(os.listdir(self.out)) - self.before:
            path = self.out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def build_model(s: TrainSettings, tokenizer: Tokenizer) -> Starcoder2ForCausalLM:
    if s.init:
        model = Starcoder2ForCausalLM.from_pretrained(s.init, dtype=torch.float32)
        if tokenizer.vocab_size > model.config.vocab_size:
            raise InputError("the tokenizer is larger than the model's vocabulary")
        return model
    config = model_config(s.shape, tokenizer.vocab_size, tokenizer.eos_id)
    torch.manual_seed(s.seed)
    model = Starcoder2ForCausalLM(config)
    model.init_weights()
    return model


def make_optimizer(model: torch.nn.Module, s: TrainSettings) -> torch.optim.AdamW:
    """Weight decay on matrices only (not on biases, norms or the embedding)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim == 2 and "embed_tokens" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": s.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=s.lr, betas=(0.9, 0.95), eps=1e-8)


def save_optimizer(optimizer: torch.optim.AdamW, model: torch.nn.Module, path: Path) -> None:
    """Adam moments as safetensors, keyed by parameter name (no pickle)."""
    names = {id(p): n for n, p in model.named_parameters()}
    tensors = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p)
            if state:
                for key in ("exp_avg", "exp_avg_sq", "step"):
                    tensors[f"{names[id(p)]}::{key}"] = state[key].detach().to("cpu", copy=True).contiguous()
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)


def load_optimizer(optimizer: torch.optim.AdamW, model: torch.nn.Module, path: Path) -> None:
    tensors = load_file(str(path))
    for name, p in model.named_parameters():
        if f"{name}::step" in tensors:
            # Adam keeps its step count on the CPU unless it runs fused/capturable; the moments live with p.
            optimizer.state[p] = {"exp_avg": tensors[f"{name}::exp_avg"].to(p.device),
                                  "exp_avg_sq": tensors[f"{name}::exp_avg_sq"].to(p.device),
                                  "step": tensors[f"{name}::step"]}


def save_run(out: Path, model, optimizer, tokenizer: Tokenizer, settings: TrainSettings, state: TrainState) -> None:
    """The checkpoint, then the optimizer, then the state: a run folder with a state file is complete."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        tokenizer.save(out / "tokenizer.json")
        save_optimizer(optimizer, model, out / OPTIMIZER_FILE)
        payload = {"settings": asdict(settings), "state": asdict(state)}
        atomic_write_bytes(out / STATE_FILE, (json.dumps(payload, indent=1) + "\n").encode())
    except OSError as err:
        raise Sc2Error(f"cannot write the run to {out}: {err.strerror or err}") from None


def next_token_loss(model, rows: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of each token of `rows` (B, seq_len + 1) given the ones before it: the reference's
    `model(rows, labels=rows).loss`, without the logits of the last position (nothing follows it) and so with
    exactly seq_len positions in the forward, inside the sliding window."""
    logits = model(rows[:, :-1]).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1))


def heldout_loss(model, rows: torch.Tensor, batch_size: int, autocast: bool) -> float | None:
    if rows.shape[0] == 0:
        return None
    was_training = model.training
    model.eval()
    losses = []
    device = model.device
    with torch.no_grad():
        for i in range(0, rows.shape[0], batch_size):
            batch = rows[i:i + batch_size].long().to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                losses.append(next_token_loss(model, batch).item())
    model.train(was_training)
    return sum(losses) / len(losses)


def prepare_tokenizer(s: TrainSettings, train_files) -> Tokenizer:
    if s.init and (Path(s.init) / "tokenizer.json").is_file():
        return Tokenizer.from_dir(s.init)
    texts = (f.text for f in train_files)
    return Tokenizer(train_bpe(texts, s.shape.vocab_size))


def train(settings: TrainSettings, resume: bool = True,
          on_progress: Callable[[TrainState, float, float], None] | None = None,
          stop_after: int | None = None, on_note: Callable[[str], None] | None = None) -> TrainState:
    """Run (or continue) training until `settings.max_steps` (or `stop_after` more steps, for tests).

    `on_note` receives what the user should know about the run (such as: there is no held-out data). A saved run
    in `settings.out` continues (with `resume`) only when asked with its own settings (`SavedRunMismatch`)."""
    keep_freed_memory()
    out = Path(settings.out)
    check_settings(settings)
    check_out(out)
    state = None
    if resume and (out / STATE_FILE).is_file():
        saved, state = load_saved(out)
        kept = {name: getattr(settings, name) for name in (*RESUMABLE, "out")}
        saved = TrainSettings.from_dict({**saved, **kept})
        found = differences(saved, settings)
        if found:
            raise SavedRunMismatch(out, found)
        settings = saved
    s = settings
    data_dir = resolve_data_dir(s.data)
    if is_corpus(data_dir):  # a corpus built by corpus.py: held out by package
        train_files = trainset.corpus_files(data_dir, "train")
        heldout_files = trainset.corpus_files(data_dir, "heldout")
        files = train_files + heldout_files
    else:
        files = trainset.collect_files(data_dir)
        train_files, heldout_files = trainset.split_files(files, s.heldout_fraction)
    if not train_files:
        raise InputError(f"no Python source files found in {s.data}")

    new_paths = None if state is not None else _NewPaths(out)
    try:
        return _run(s, out, state, new_paths, train_files, heldout_files, len(files), on_progress, stop_after,
                    on_note)
    except BaseException:
        if new_paths is not None and not new_paths.checkpointed:  # a fresh run failed before its first checkpoint
            new_paths.remove()
        raise


def _run(s: TrainSettings, out: Path, state: TrainState | None, new_paths: "_NewPaths | None", train_files,
         heldout_files, n_files: int, on_progress, stop_after: int | None, on_note) -> TrainState:
    """The steps of `train` (a saved `state` to continue, or None to start)."""
    resuming = state is not None
    if resuming:
        tokenizer = Tokenizer.from_dir(out)
    else:
        state = TrainState()
        tokenizer = prepare_tokenizer(s, train_files)
    eval_rows = trainset.first_rows(heldout_files, tokenizer, s.seq_len, s.seed, s.repo_name, s.fim_rate, s.eval_rows)
    batches = trainset.Batches(train_files, tokenizer, s.seq_len, s.seed, s.repo_name, s.fim_rate, s.batch_size,
                               state.epoch, state.row)
    first_batch = batches.next()  # (before the model is built: data too small for one batch is an error at once)
    evaluate = eval_rows.shape[0] > 0
    if not evaluate and on_note:
        if heldout_files:
            on_note(f"no held-out data: the {len(heldout_files)} held-out file(s) give no full sequence of "
                    f"{s.seq_len} tokens, so the held-out loss is not measured")
        else:
            on_note(f"no held-out data: none of the {n_files} source file(s) falls in the held-out "
                    f"{s.heldout_fraction:.0%} (chosen by path), so the held-out loss is not measured")
    if resuming:
        model = Starcoder2ForCausalLM.from_pretrained(out, dtype=torch.float32, device=s.device)
        optimizer = make_optimizer(model, s)
        load_optimizer(optimizer, model, out / OPTIMIZER_FILE)
    else:
        model = build_model(s, tokenizer).to(s.device)
        optimizer = make_optimizer(model, s)
    model.train()

    limit = s.max_steps if stop_after is None else min(s.max_steps, state.step + stop_after)
    tokens_per_step = s.batch_size * s.grad_accum * s.seq_len
    while state.step < limit:
        started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(state.step, s)
        total = 0.0
        for _ in range(s.grad_accum):
            batch = (first_batch if first_batch is not None else batches.next()).long().to(s.device)
            first_batch = None
            state.epoch, state.row = batches.epoch, batches.row
            with torch.autocast(torch.device(s.device).type, dtype=torch.bfloat16, enabled=s.autocast):
                loss = next_token_loss(model, batch) / s.grad_accum
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.tokens_seen += tokens_per_step
        elapsed = time.perf_counter() - started
        state.seconds += elapsed
        row = [state.step, state.tokens_seen, round(total, 4)]
        if evaluate and (state.step % s.eval_every == 0 or state.step == limit):
            row.append(round(heldout_loss(model, eval_rows, s.batch_size, s.autocast), 4))
        state.history.append(row)
        if state.step % s.save_every == 0 or state.step == limit:
            save_run(out, model, optimizer, tokenizer, s, state)
            if new_paths is not None:
                new_paths.checkpointed = True
        if s.snapshot_every and state.step % s.snapshot_every == 0:
            snapshot = out / "snapshots" / f"step-{state.step}"
            model.save_pretrained(snapshot)  # for the curve of quality against tokens seen
            tokenizer.save(snapshot / "tokenizer.json")
        if on_progress:
            on_progress(state, total, tokens_per_step / elapsed)
    return state


def export(run_dir: str | Path, dest: str | Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Copy a run's model (cast, e.g. to bfloat16 to halve its size) and tokenizer into a clean checkpoint."""
    model = Starcoder2ForCausalLM.from_pretrained(run_dir, dtype=dtype)
    dest = Path(dest)
    model.save_pretrained(dest)
    Tokenizer.from_dir(run_dir).save(dest / "tokenizer.json")
    return dest

