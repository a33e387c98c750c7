"""Pieces several commands share: the model reference, loading a backend, reading input, options into a job."""

from __future__ import annotations

import re
import sys

from .. import settings
from ..errors import InputError, UsageError
from . import output


def model_ref(model: str | None) -> str:
    return model or settings.get("model")[0]


def open_checkpoint(model: str | None, revision: str | None, offline: bool):
    from ..checkpoint import open_checkpoint

    return open_checkpoint(model_ref(model), revision, offline)


def load_model(model: str | None, revision: str | None, device: str | None, dtype: str | None, offline: bool,
               model_class=None, quantize: str = "none", checkpoint=None):
    """The model on its device (config defaults for device and dtype), with a status line at a terminal."""
    from ..checkpoint import load_model as load
    from ..devices import configured

    checkpoint = checkpoint or open_checkpoint(model, revision, offline)
    # The settings' device and dtype where none is given (a bad stored one names where it came from).
    loaded = load(checkpoint, *configured(device, dtype), quantize=quantize, model_class=model_class)
    if sys.stderr.isatty():
        m = loaded.model
        weights = str(m.dtype).removeprefix("torch.") + (", int8 weights" if quantize == "int8" else "")
        output.status(f"loaded {checkpoint.ref} on {m.device} ({weights}) in {loaded.load_seconds:.2f}s")
    return loaded


def refuse_local_options(why: str = "the server runs the model it was started with (choose it with `sc2 serve "
                         "--model`)", **given) -> None:
    """With --server the server's model runs where it was started: options that pick or place a local model
    would be silently ignored, so they are refused."""
    for name, value in given.items():
        if value not in (None, False, "none"):
            raise UsageError(f"--{name} does not apply with --server: {why}")


BACKENDS = ("sc2", "openai")


def choose_backend(server: str | None, backend: str, model: str | None, revision: str | None, offline: bool,
                   device: str | None, dtype: str | None, quantize: str):
    """Where `complete` and `infill` run. None: on `sc2 serve`'s own routes (the whole pipeline runs there, see
    serve/client.py). Else (tokenizer, config, start): the prompt is planned here with that tokenizer and config,
    and `start()` gives the backend that runs it: the local model (loaded only then), or a remote OpenAI-compatible
    engine (--backend openai, with --model's tokenizer, the configured model's without it)."""
    kind = backend.strip().lower()
    if kind not in BACKENDS:
        raise UsageError(f"--backend must be sc2 or openai (got {backend!r})")
    if kind == "openai" and not server:
        raise UsageError("--backend openai (or SC2_BACKEND=openai) needs --server URL: an OpenAI-compatible server")
    if server and kind == "sc2":
        refuse_local_options(model=model, revision=revision, device=device, dtype=dtype, quantize=quantize,
                             offline=offline)
        return None
    if server:
        from ..backends.openai_remote import OpenAIBackend
        from ..checkpoint import open_checkpoint as open_files

        refuse_local_options("the server places and runs its model (--model names it here for its tokenizer)",
                             device=device, dtype=dtype, quantize=quantize)
        remote = OpenAIBackend.connect(server, open_files(model_ref(model), revision, offline, weights=False),
                                       model_given=model is not None)
        for note in remote.notes:
            output.warning(note)
        return remote.tokenizer, remote.config, lambda: remote
    checkpoint = open_checkpoint(model, revision, offline)
    return checkpoint.tokenizer, checkpoint.config, lambda: local_backend(checkpoint, device, dtype, quantize)


def local_backend(checkpoint, device: str | None, dtype: str | None, quantize: str):
    from ..backends.local import LocalBackend

    return LocalBackend(load_model(None, None, device, dtype, False, quantize=quantize, checkpoint=checkpoint))


def generation_job(max_new_tokens: int, num_samples: int, temperature: float, top_k: int, top_p: float,
                   min_p: float, repetition_penalty: float, seed: int | None, stop: list[str] | None,
                   ignore_eos: bool, prompt_lookup: bool | None, decode: str):
    """The options of `complete` and `infill` as a generation job, checked before any model is loaded."""
    from ..backends.base import GenerationJob
    from ..generation.lookup import LOOKUP_NEEDS, lookup_applies

    if max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be at least 1 (got {max_new_tokens})")
    if num_samples < 1:
        raise UsageError(f"--num-samples must be at least 1 (got {num_samples})")
    sampling = sampling_params(temperature, top_k, top_p, min_p, repetition_penalty, seed)
    if prompt_lookup and not lookup_applies(sampling, num_samples):  # (one prompt: its samples are the rows)
        raise UsageError(f"--lookup: {LOOKUP_NEEDS}")
    return GenerationJob(sampling=sampling, max_new_tokens=max_new_tokens, num_samples=num_samples,
                         stop=tuple(unescape(s) for s in stop or ()), ignore_eos=ignore_eos,
                         prompt_lookup=prompt_lookup, decode=decode)


ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def unescape(text: str) -> str:
    """The usual escapes of a shell-typed string: `--stop "\\n"` arrives as backslash-n and means a newline.
    Other backslashes stay as typed."""
    return re.sub(r"\\(.)", lambda m: ESCAPES.get(m.group(1), m.group(0)), text)


def sampling_params(temperature, top_k, top_p, min_p, repetition_penalty, seed):
    from ..generation.params import SamplingParams

    try:
        return SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                              repetition_penalty=repetition_penalty, seed=seed)
    except ValueError as err:
        raise UsageError(f"--{str(err).replace('_', '-')}") from None


def read_stdin_bytes() -> bytes:
    return sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()


def read_text_input(text: str | None, what: str = "prompt") -> str:
    """The argument, or stdin when the argument is '-' or absent and stdin is piped."""
    if text is None or text == "-":
        if text is None and sys.stdin.isatty():
            raise UsageError(f"give a {what} as an argument or pipe it on stdin")
        data = read_stdin_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"the {what} on stdin is not UTF-8 text") from None
    if text == "":
        raise UsageError(f"the {what} is empty; give some text as an argument or on stdin")
    return text


# Flags of request fields whose name is not simply --field-name.
# What to do about it, where the fix is a flag.
HINTS = {"truncate": "drop --no-truncate to cut it from the left"}
FLAGS = {"truncate": "--no-truncate", "prompt_lookup": "--lookup", "prompt": "PROMPT", "text": "TEXT", "file": "FILE",
         "gguf_file": "OUT", "checkpoint": "CHECKPOINT"}


def flag_message(err: InputError) -> str:
    """A core input error worded for the command line: the flag of the field at fault, then the problem."""
    if isinstance(err, UsageError) or not err.field:
        return str(err)
    flag = FLAGS.get(err.field, "--" + err.field.replace("_", "-"))
    hint = HINTS.get(err.field)
    return f"{flag}: {err}" + (f" ({hint})" if hint else "")
