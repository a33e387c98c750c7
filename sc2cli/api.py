"""The library API: load a model once, then complete and fill in code with it (what `sc2cli` exports).

    import sc2cli
    model = sc2cli.load("sc2-tiny", dtype="float32")
    sc2cli.complete("def fibonacci(n):", model=model).text
    sc2cli.infill("def add(a, b):\\n    return ", "\\n", model=model).text
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .backends.base import GenerationJob
from .backends.local import LocalBackend
from .checkpoint import load as load_checkpoint
from .completion import CompletionRequest, CompletionResult
from .completion import complete as run_completion
from .fim.formats import ContextFile
from .fim.pipeline import InfillRequest, InfillResult, fill
from .generation.params import SamplingParams
from .settings import SHIPPED_MODEL


def load(model: str = SHIPPED_MODEL, device: str = "auto", dtype: str = "auto", quantize: str = "none",
         revision: str | None = None, offline: bool = False) -> LocalBackend:
    """A model ready to complete: a Hub id (downloaded into the Hugging Face cache), a checkpoint folder, or the
    shipped model. Keep it and pass it as `model=` to `complete` and `infill`: each call then evaluates only the
    part of its prompt that the call before did not share (an editor asking again after a keystroke)."""
    return LocalBackend(load_checkpoint(model, device=device, dtype=dtype, revision=revision, offline=offline,
                                        quantize=quantize), reuse=True)


def complete(prompt: str, model: LocalBackend | str | None = None, *, max_new_tokens: int = 128,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
             repetition_penalty: float = 1.0, seed: int | None = None, stop: Sequence[str] = (),
             num_samples: int = 1, mode: str = "auto", on_text: Callable[[str], None] | None = None
             ) -> CompletionResult:
    """Continue `prompt`; `.text` is the first completion, `.completions` all of them. `mode`: auto | free | block
    | line (see `sc2 complete --help`); `on_text` sees the text as it is made."""
    job = _job(max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, seed, stop, num_samples)
    return run_completion(CompletionRequest(prompt, mode=mode, job=job), _backend(model), on_text=on_text)


def infill(prefix: str, suffix: str, model: LocalBackend | str | None = None, *, path: str | None = None,
           mode: str = "auto", context: Sequence[ContextFile] = (), repo_name: str | None = None,
           max_new_tokens: int = 128, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
           min_p: float = 0.0, repetition_penalty: float = 1.0, seed: int | None = None, stop: Sequence[str] = (),
           num_samples: int = 1, on_text: Callable[[str], None] | None = None) -> InfillResult:
    """Fill in the code between `prefix` and `suffix` (an editor's text around the cursor); `.text` is the best
    middle, `.candidates` all of them, best first. `path` names the file (Python files rank parsing candidates
    first); `context` files and `repo_name` add repository context in StarCoder2's format."""
    job = _job(max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, seed, stop, num_samples)
    request = InfillRequest.from_text(prefix, suffix, path=path, mode=mode, context=tuple(context),
                                      repo_name=repo_name, job=job)
    return fill(request, _backend(model), on_text=on_text)


def _backend(model: LocalBackend | str | None) -> LocalBackend:
    if model is None or isinstance(model, str):
        return load(model or SHIPPED_MODEL)
    return model


def _job(max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, seed, stop,
         num_samples) -> GenerationJob:
    sampling = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                              repetition_penalty=repetition_penalty, seed=seed)
    return GenerationJob(sampling=sampling, max_new_tokens=max_new_tokens, num_samples=num_samples,
                         stop=tuple(stop))
