"""Pieces several commands share: picking and loading the model, reading input, validating sampling options."""

from __future__ import annotations

import sys

from .. import settings
from ..errors import UsageError
from . import output


def model_ref(model: str | None) -> str:
    return model or settings.get("model")[0]


def load_model(model: str | None, revision: str | None, device: str | None, dtype: str | None, offline: bool,
               model_class=None, quantize: str = "none"):
    from ..linear import QUANTIZE_CHOICES
    from ..load import load

    ref = model_ref(model)
    device = device or settings.get("device")[0]
    dtype = dtype or settings.get("dtype")[0]
    if quantize not in QUANTIZE_CHOICES:
        raise UsageError(f"--quantize must be one of {', '.join(QUANTIZE_CHOICES)} (got {quantize!r})")
    loaded = load(ref, device=device, dtype=dtype, revision=revision, offline=offline, model_class=model_class,
                  quantize=quantize)
    if sys.stderr.isatty():
        m = loaded.model
        weights = str(m.dtype).removeprefix('torch.') + (", int8 weights" if quantize == "int8" else "")
        output.status(f"loaded {ref} on {m.device} ({weights}) "
                      f"in {loaded.load_seconds:.2f}s")
    return loaded


def decode_mode(decode: str, loaded) -> str:
    """The decode mode the engine will use, checked against the loaded model (a usage error if it cannot run)."""
    from ..decode import resolve_mode

    try:
        return resolve_mode(decode.strip().lower(), loaded.model)
    except ValueError as err:
        raise UsageError(f"--decode: {err}") from None


def check_prompt_lookup(prompt_lookup: bool | None, sampling, num_samples: int) -> None:
    from ..engine import LOOKUP_NEEDS, lookup_applies

    if prompt_lookup and not lookup_applies(sampling, num_samples):  # (one prompt: its samples are the rows)
        raise UsageError(f"--prompt-lookup: {LOOKUP_NEEDS}")


def read_text_input(text: str | None, what: str = "prompt") -> str:
    """The argument, or stdin when the argument is '-' or absent and stdin is piped."""
    if text is None or text == "-":
        if text is None and sys.stdin.isatty():
            raise UsageError(f"give a {what} as an argument or pipe it on stdin")
        data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"the {what} on stdin is not UTF-8 text") from None
    if text == "":
        raise UsageError(f"the {what} is empty; give some text as an argument or on stdin")
    return text


def sampling_params(temperature, top_k, top_p, min_p, repetition_penalty, seed):
    from ..sampling import SamplingParams

    try:
        return SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                              repetition_penalty=repetition_penalty, seed=seed)
    except ValueError as err:
        raise UsageError(f"--{str(err).replace('_', '-')}") from None


def check_counts(max_new_tokens: int, num_samples: int) -> None:
    if max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be at least 1 (got {max_new_tokens})")
    if num_samples < 1:
        raise UsageError(f"--num-samples must be at least 1 (got {num_samples})")


def fit_prompt(ids: list[int], context: int, max_new_tokens: int, truncate: bool) -> list[int]:
    """Keep the prompt and its completion inside the context: cut the prompt from the left (warning) or fail."""
    room = context - min(max_new_tokens, context // 2)
    if len(ids) <= room:
        return ids
    if not truncate:
        raise UsageError(f"the prompt has {len(ids)} tokens; with --max-new-tokens {max_new_tokens} only {room} fit "
                         f"the context of {context} (drop --no-truncate to cut it from the left)")
    output.warning(f"prompt cut from the left: {len(ids)} tokens, kept the last {room} of a {context}-token context")
    return ids[-room:]
