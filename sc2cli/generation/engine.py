"""Generation: chunked prefill into a preallocated KV cache, then token-by-token decode, streamed as `Step`s.

`stream(...)` is the one loop every command consumes; `generate(...)` collects it into `Completion`s.
Prompts are token ids (the engine never sees raw text except to match stop strings on decoded output).
Several prompts run as one left-padded batch with positions taken from the padding mask, so each row yields
exactly what it yields alone; `num_samples` copies of each prompt share one prefill.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..model import linear
from ..model.cache import KVCache
from ..tokenizer import IncrementalDetokenizer, Tokenizer
from .decode import GRAPH_MODES, make_step, resolve_mode
from .healing import Healer
from .lookup import LOOKUP_NEEDS, PromptLookup, lookup_applies
from .results import Completion, Step
from .sampling import SamplingParams, make_generator, process_logits, sample, token_logprobs
from .slots import Slot
from .stopping import Chain, StopStringMatcher, TextFilter

DEFAULT_PREFILL_CHUNK = 512  # tokens per forward pass in a prompt's evaluation, all rows together


@dataclass(frozen=True)
class StopConditions:
    token_ids: frozenset[int] = frozenset()
    strings: tuple[str, ...] = ()
    max_new_tokens: int = 128
    context_limit: int | None = None  # total positions (prompt + generated) the model may use
    # Builds, per row, a filter that sees the text after stop strings and may hold, rewrite or end it
    # (the line/block modes of infilling).
    text_filter: Callable[[int], TextFilter] | None = None  # called with the row index

    def make_filter(self, row: int) -> TextFilter:
        matcher = StopStringMatcher(self.strings)
        return Chain(matcher, self.text_filter(row)) if self.text_filter else matcher


def _left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device) -> tuple[Tensor, Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if prompt:
            ids[row, width - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
            mask[row, width - len(prompt):] = 1
    return ids.to(device), mask.to(device)


@torch.inference_mode()
def prefill(model, ids: Tensor, mask: Tensor, cache: KVCache, chunk_size: int = DEFAULT_PREFILL_CHUNK,
            start: int = 0) -> Tensor:
    """Run the prompt through the model in chunks; returns the last position's logits (B, V). `start`: the
    position of the first id (the cache already holds the ones before it).

    Chunking bounds the memory of long prompts: each chunk attends over at most the window (or the cache) plus
    itself. `chunk_size` counts the tokens of all rows together, so that the activations of a pass are the same
    size whatever the batch (4 prompts of 512 tokens in one pass took 73 MB on the ~183M shape, in four 25).
    """
    positions = (mask.cumsum(-1) - 1).clamp(min=0) + start
    columns = max(1, chunk_size // ids.shape[0])
    logits = None
    for first in range(0, ids.shape[1], columns):
        cols = slice(first, first + columns)
        logits = model(ids[:, cols], attention_mask=mask[:, cols], position_ids=positions[:, cols], cache=cache,
                       logits_to_keep=1).logits
    return logits[:, -1]


def stream(
    model,
    tokenizer: Tokenizer | None,
    prompts: Sequence[Sequence[int]],
    sampling: SamplingParams = SamplingParams(),
    stop: StopConditions = StopConditions(),
    num_samples: int = 1,
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
    generator: torch.Generator | None = None,
    prompt_lookup: bool | None = None,
    decode: str = "auto",
    heal: str = "",
    slot: Slot | None = None,
) -> Iterator[Step]:
    """Yield `Step`s for every row (row = prompt_index * num_samples + sample_index) until each row stops.

    prompt_lookup: check drafts copied from the prompt (see `lookup.py`) several tokens per forward pass; the
    tokens are the greedy ones either way. None (the default) turns it on where it applies and pays: one greedy
    row without a repetition penalty, when steps are not replayed from a CUDA graph (there a draft's eager
    pass costs several replayed steps).
    decode: how single steps run (see `decode.py`): auto | eager | static | cuda-graph | compile.
    heal: whitespace cut from the end of the prompts, which every row must begin with (see `healing.py`); it is
    not part of the steps' text.
    slot: a cache kept between runs of one prompt and one sample (see `slots.py`): the prompt's start that the
    slot holds already is not evaluated again."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    if num_samples < 1:
        raise ValueError("num_samples must be at least 1")
    if stop.max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    config = model.config
    device = model.device
    longest = max(len(p) for p in prompts)
    limit = stop.context_limit or config.max_position_embeddings
    if longest >= limit:
        raise ValueError(f"prompt of {longest} tokens leaves no room in a context of {limit}")
    new_tokens = min(stop.max_new_tokens, limit - longest)
    pad_id = config.pad_token_id if config.pad_token_id is not None else (config.eos_token_ids or [0])[0]
    if not 0 <= pad_id < config.vocab_size:
        pad_id = 0  # padded positions are masked, so any in-range id will do

    ids, mask = _left_pad(prompts, pad_id, device)
    if slot is None:
        cache = KVCache(config, len(prompts), ids.shape[1] + new_tokens, dtype=model.dtype, device=device)
        reused = 0
    else:
        if len(prompts) != 1 or num_samples != 1:
            raise ValueError("a slot serves one prompt and one sample")
        cache, reused = slot.cache, slot.reuse(prompts[0])
    history: list[int] = []  # row 0's tokens as chosen, in order (what a slot's cache then holds)
    try:
        with torch.inference_mode():
            logits = prefill(model, ids[:, reused:], mask[:, reused:], cache, prefill_chunk, start=reused)
        if num_samples > 1:
            cache = cache.repeat_rows(num_samples)
            logits = logits.repeat_interleave(num_samples, dim=0)
            ids = ids.repeat_interleave(num_samples, dim=0)
            mask = mask.repeat_interleave(num_samples, dim=0)
        rows = ids.shape[0]
        if generator is None:
            generator = make_generator(sampling.seed, device)

        # Every token seen so far (prompt + generated), preallocated, for the repetition penalty.
        seen = torch.cat([ids, torch.full((rows, new_tokens), pad_id, dtype=torch.long, device=device)], dim=1)
        seen_mask = torch.cat([mask.bool(), torch.zeros((rows, new_tokens), dtype=torch.bool, device=device)], dim=1)
        width = ids.shape[1]
        next_position = mask.sum(-1)  # (rows,)
        prompt_lengths = [len(prompts[r // num_samples]) for r in range(rows)]

        detokenizers = [IncrementalDetokenizer(tokenizer, skip_special_tokens=True) if tokenizer else None
                        for _ in range(rows)]
        matchers = [stop.make_filter(row) for row in range(rows)]
        active = [True] * rows

        def emit(row: int, token: int, logprob: float, t: int) -> Step:
            """The step of the row's t-th new token (0-based); marks the row finished when it ends there."""
            if token in stop.token_ids:
                active[row] = False
                tail, text = _flush(detokenizers[row], matchers[row])
                return Step(row, token, text, logprob, "stop", raw=tail)
            raw = detokenizers[row].add(token) if detokenizers[row] else ""
            text = raw
            if healer is not None:
                healer.advance(row, token)
                text = healer.strip(row, text)
            text, hit = matchers[row].feed(text)
            if hit:
                active[row] = False
                return Step(row, token, text, logprob, "stop", raw=raw)
            if t == new_tokens - 1 or prompt_lengths[row] + t + 1 >= limit:
                active[row] = False
                tail, rest = _flush(detokenizers[row], matchers[row])
                return Step(row, token, text + rest, logprob, "length", raw=raw + tail)
            return Step(row, token, text, logprob, raw=raw)

        decode = resolve_mode(decode, model)
        decode_step = None  # built at the first decoded token, so a CUDA graph's capture never delays the first one
        if prompt_lookup is None:
            prompt_lookup = lookup_applies(sampling, rows) and decode not in GRAPH_MODES
        elif prompt_lookup and not lookup_applies(sampling, rows):
            raise ValueError(LOOKUP_NEEDS)
        lookup = PromptLookup(prompts[0]) if prompt_lookup else None

        healer = Healer(tokenizer, heal, rows) if heal and tokenizer is not None else None
        t = 0
        while True:
            if healer is not None and healer.active():
                logits = healer.constrain(logits)
            processed = process_logits(logits, sampling, seen[:, :width + t], seen_mask[:, :width + t])
            chosen = sample(processed, generator, sampling.greedy)
            logprobs = token_logprobs(processed, chosen)
            chosen_list, logprob_list = chosen.tolist(), logprobs.tolist()  # one host sync per step
            seen[:, width + t] = chosen
            history.append(chosen_list[0])
            seen_mask[:, width + t] = torch.tensor(active, device=device)
            for row in range(rows):
                if active[row]:
                    yield emit(row, chosen_list[row], logprob_list[row], t)
            if not any(active):
                return
            t += 1
            draft = []
            if lookup is not None:
                lookup.append(chosen_list[0])
                if not (healer is not None and healer.active()):  # (a draft check would not apply the healing)
                    draft = lookup.draft(limit=new_tokens - t - 1)  # leave room for the token the last check adds
            if not draft:
                with torch.inference_mode():
                    if decode_step is None:  # (a slot keeps its step, and on CUDA its captured graph, for good)
                        decode_step = (slot.step(decode, lambda: make_step(model, cache, decode)) if slot is not None
                                       else make_step(model, cache, decode))
                    # Finished rows keep decoding (their tokens are ignored), so no mask is needed for the new column.
                    logits = decode_step(chosen, next_position)
                next_position += 1
                continue
            # One pass over the chosen token and the draft: position i predicts the token after draft[:i].
            ids_in = torch.tensor([[chosen_list[0], *draft]], dtype=torch.long, device=device)
            positions = next_position[:, None] + torch.arange(len(draft) + 1, device=device)
            with torch.inference_mode(), linear.decode_step():  # a few rows: the decode products (see linear.py)
                all_logits = model(ids_in, position_ids=positions, cache=cache, tentative=True).logits[0]
            checked = process_logits(all_logits, sampling, seen[:, :width + t].expand(len(draft) + 1, -1),
                                     seen_mask[:, :width + t].expand(len(draft) + 1, -1))
            predicted = checked.argmax(-1)
            agree = (predicted[:-1] == torch.tensor(draft, device=device)).tolist()
            accepted = agree.index(False) if False in agree else len(draft)
            cache.commit(1 + accepted)
            next_position += 1 + accepted
            if accepted:
                draft_logprobs = token_logprobs(checked[:accepted], predicted[:accepted]).tolist()
                for i in range(accepted):
                    seen[0, width + t] = draft[i]
                    history.append(draft[i])
                    seen_mask[0, width + t] = True
                    lookup.append(draft[i])
                    yield emit(0, draft[i], draft_logprobs[i], t)
                    t += 1
                    if not active[0]:
                        return
            logits = all_logits[accepted][None]
    finally:
        if slot is not None:
            slot.remember([*prompts[0], *history])


def _flush(detokenizer: IncrementalDetokenizer | None, matcher: TextFilter) -> tuple[str, str]:
    """(the decoded text still pending, the final text still held back) when a row ends: a partial character, a
    partial stop string, lines a filter held."""
    tail = detokenizer.flush() if detokenizer else ""
    text, _ = matcher.feed(tail)
    return tail, text + matcher.flush()


def kept_token_count(raws: Sequence[str], text: str, healed: str = "") -> int:
    """How many of a row's tokens (`raws`: each one's decoded text) the returned `text` is made of. Stop strings
    and the line/block filters cut the text, and filters re-indent lines, but none adds or changes code or line
    breaks: so the answer is the fewest tokens whose text, after the healed whitespace, holds as many
    non-whitespace characters and newlines as `text` does."""
    need_code = sum(not ch.isspace() for ch in text)
    need_lines = text.count("\n")
    if need_code == need_lines == 0:
        return 0
    code = lines = 0
    skip = len(healed)
    for k, raw in enumerate(raws, 1):
        for ch in raw:
            if skip:
                skip -= 1
                continue
            code += not ch.isspace()
            lines += ch == "\n"
        if code >= need_code and lines >= need_lines:
            return k
    return len(raws)


def generate(
    model,
    tokenizer: Tokenizer | None,
    prompts: Sequence[Sequence[int]],
    sampling: SamplingParams = SamplingParams(),
    stop: StopConditions = StopConditions(),
    num_samples: int = 1,
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
    generator: torch.Generator | None = None,
    on_step: Callable[[Step], None] | None = None,
    prompt_lookup: bool | None = None,
    decode: str = "auto",
    heal: str = "",
    slot: Slot | None = None,
) -> list[Completion]:
    """Collect `stream` into one `Completion` per row; `on_step` sees each step as it happens (for streaming).
    Each completion's tokens and logprob are those its text is made of: tokens whose text a stop string or a
    filter cut off whole are not counted (nor then is a stop token's logprob). A token the cut fell inside is
    counted (it was generated and made part of the text: "\n\n" when a block ends after the first newline),
    so the tokens' text runs past the completion's by at most the rest of that one token."""
    rows = len(prompts) * num_samples
    completions = [Completion(row=r) for r in range(rows)]
    raws: list[list[str]] = [[] for _ in range(rows)]
    logprobs: list[list[float]] = [[] for _ in range(rows)]
    steps = stream(model, tokenizer, prompts, sampling, stop, num_samples, prefill_chunk, generator, prompt_lookup,
                   decode, heal, slot)
    try:
        for step in steps:
            c = completions[step.row]
            c.text += step.text
            if step.finish_reason == "stop" and step.token in stop.token_ids:
                if raws[step.row]:
                    raws[step.row][-1] += step.raw  # a character the stop token completed belongs to the one before
                c.logprob = sum(logprobs[step.row]) + step.logprob
            else:
                c.tokens.append(step.token)
                raws[step.row].append(step.raw)
                logprobs[step.row].append(step.logprob)
                c.logprob = sum(logprobs[step.row])
            c.finish_reason = step.finish_reason
            if on_step is not None:
                on_step(step)
    finally:
        # Closed here, not whenever it is collected: an exception from `on_step` (a cancelled run) must leave a
        # slot's bookkeeping done before the slot serves another run.
        steps.close()
    if tokenizer is not None:
        for c in completions:
            kept = kept_token_count(raws[c.row], c.text, heal)
            if kept < len(c.tokens):
                c.tokens = c.tokens[:kept]
                c.logprob = sum(logprobs[c.row][:kept])
    for c in completions:
        c.token_logprobs = logprobs[c.row][: len(c.tokens)]
    return completions
