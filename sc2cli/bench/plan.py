"""What `sc2 bench speed` will measure, from its request: the engines (dtype, peers, sc2 variants), the device,
the checkpoint (a model reference, the shipped model, or random weights of a named shape) and its config, and
then the `BenchPlan` that `speed.run_bench` runs.

Two steps, so that a caller can check the request against the model before anything is written:
`prepare(request)` resolves everything and reads the config; `make_plan(prepared)` writes the random checkpoint
of a named shape (once, cached) and gives the plan.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from .checkpoints import DTYPE_NAMES, SHAPES, random_checkpoint, shape_config
from .workers import PEERS, SC2_VARIANTS

PEER_ALIASES = {"llama_cpp": "llama.cpp", "llamacpp": "llama.cpp", "llama-cpp": "llama.cpp"}


@dataclass
class BenchPlan:
    checkpoint: Path
    label: str  # "shape s", "shipped model", or the --model ref
    key: str = "shipped"  # names the checkpoint in the bench cache: the shape, "shipped", or the --model ref
    dtype: str = "bfloat16"
    threads: int = 1
    repeats: int = 3
    prompt_tokens: int = 512
    new_tokens: int = 128
    peers: Sequence[str] = PEERS
    variants: Sequence[str] = ("sc2",)  # sc2 engines measured; "sc2" always
    device: str = "cpu"
    gguf: Path | None = None
    bandwidth_gib: float = 1.0
    seed: int = 0
    written: bool | None = None  # for named shapes: whether the random checkpoint was written by this run
    extra: dict = field(default_factory=dict)


@dataclass
class SpeedRequest:
    """A speed comparison as asked: `model` (any reference sc2 loads) or `shape` (shipped, s, 3b, tiny; default
    s), `peers` and `variants` as comma-separated names ("none" for none; variants None: the default set)."""

    model: str | None = None
    shape: str | None = None
    revision: str | None = None
    offline: bool = False
    dtype: str = "bfloat16"
    threads: int | None = None  # None: torch's default here
    repeats: int = 3
    prompt_tokens: int = 512
    new_tokens: int = 128
    peers: str = "transformers,llama.cpp"
    variants: str | None = None
    device: str = "cpu"
    gguf: Path | None = None
    bandwidth_gib: float = 1.0
    seed: int = 0


@dataclass
class Prepared:
    """A request resolved: the engines, the device, and the checkpoint's config (a named shape's checkpoint is
    not written yet: `checkpoint` and `label` are None until `make_plan`)."""

    request: SpeedRequest
    dtype: str
    peers: list[str]
    variants: list[str]
    device: str
    config: object
    shape: str | None = None
    checkpoint: Path | None = None
    label: str | None = None


def parse_peers(text: str) -> list[str]:
    """Comma-separated peer names (aliases of llama.cpp accepted, duplicates dropped); "none" or "" for none."""
    names = [] if text.strip().lower() in ("", "none") else [p.strip().lower() for p in text.split(",")]
    names = [PEER_ALIASES.get(p, p) for p in names]
    unknown = [p for p in names if p not in PEERS]
    if unknown:
        raise InputError(f"unknown peer {unknown[0]!r}; use transformers, llama.cpp or none")
    return list(dict.fromkeys(names))


def parse_variants(text: str | None, device: str, above_avx2: bool = False) -> list[str]:
    """Comma-separated sc2 variants; None: sc2-int8, sc2-eager on CUDA (where the default decode differs), and
    sc2-avx2 on a CPU above AVX2 (`above_avx2`: what an AVX2 machine would run, measured here)."""
    if text is None:
        cuda = device.strip().lower().startswith("cuda")
        names = ["sc2-int8"] + (["sc2-eager"] if cuda else []) + (["sc2-avx2"] if above_avx2 and not cuda else [])
    else:
        names = [] if text.strip().lower() in ("", "none") else [v.strip().lower() for v in text.split(",")]
    bad = [v for v in names if v not in SC2_VARIANTS]
    if bad:
        raise InputError(f"unknown variant {bad[0]!r}; use {', '.join(v for v in SC2_VARIANTS if v != 'sc2')}")
    return names


def _above_avx2() -> bool:
    from ..devices import cpu_capability

    return cpu_capability().isa.startswith("AVX512")


def parse_dtype(text: str) -> str:
    dtype = text.strip().lower()
    if dtype not in DTYPE_NAMES:
        raise InputError(f"unknown dtype {dtype!r}; use {', '.join(DTYPE_NAMES)}")
    return dtype


def prepare(request: SpeedRequest) -> Prepared:
    """The request resolved and its checkpoint's config read; nothing is written."""
    dtype = parse_dtype(request.dtype)
    peers = parse_peers(request.peers)
    variants = parse_variants(request.variants, request.device, above_avx2=_above_avx2())
    from .. import hub
    from ..checkpoint import load_config
    from ..devices import resolve_device

    device = str(resolve_device(request.device))
    prepared = Prepared(request, dtype, peers, variants, device, config=None)
    if request.model is not None:
        prepared.checkpoint = hub.resolve(request.model, revision=request.revision, offline=request.offline)
        prepared.label = request.model
    elif (request.shape or "s").lower() == "shipped":
        prepared.checkpoint, prepared.label = hub.shipped_model_dir(), "the shipped model"
        if not (prepared.checkpoint / "config.json").is_file():
            raise InputError(f"the shipped model is not installed here ({prepared.checkpoint} is missing); "
                             "measure the s or 3b shape, or a checkpoint", field="shape")
    else:
        prepared.shape = (request.shape or "s").lower()
        if prepared.shape not in SHAPES:
            raise InputError(f"unknown shape {request.shape!r}; use shipped, s, 3b or tiny")
    prepared.config = shape_config(prepared.shape) if prepared.shape else load_config(prepared.checkpoint)
    return prepared


def make_plan(prepared: Prepared, progress: Callable[[str], None] | None = None) -> BenchPlan:
    """The plan of a prepared request; a named shape's random checkpoint is written first (once, then cached)."""
    import torch

    r = prepared.request
    checkpoint, label, written = prepared.checkpoint, prepared.label, None
    key = prepared.shape or r.model or "shipped"
    if prepared.shape:
        checkpoint, written = random_checkpoint(prepared.shape, prepared.dtype, progress=progress)
        label = f"shape {prepared.shape} (random weights, {checkpoint})"
    return BenchPlan(
        checkpoint=checkpoint, label=label, key=key, dtype=prepared.dtype, threads=r.threads or torch.get_num_threads(),
        repeats=r.repeats, prompt_tokens=r.prompt_tokens, new_tokens=r.new_tokens, peers=prepared.peers,
        variants=prepared.variants, device=prepared.device, gguf=r.gguf, bandwidth_gib=r.bandwidth_gib,
        seed=r.seed, written=written,
    )
