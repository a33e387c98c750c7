"""sc2's own engine in this process: the first backend."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from ..checkpoint import Loaded
from ..errors import InputError
from ..generation.decode import resolve_mode
from ..generation.engine import StopConditions, Step, generate
from ..generation.lookup import LOOKUP_NEEDS, lookup_applies
from ..generation.sampling import make_generator
from ..tokenizer import boundary_token_ids
from .base import Cancelled, GenerationJob, GenerationRun
from .sharing import SlotPool, Turns


class LocalBackend:
    """`reuse`: keep the KV cache of each one-prompt, one-sample run, so that the next prompt evaluates only what
    it does not share with it (see generation/slots.py). For a process that serves several requests; a one-shot
    command has nothing to reuse. `slots`: how many runs may go on at once, each with its own cache (see
    sharing.py); more wait for a free one."""

    def __init__(self, loaded: Loaded, reuse: bool = False, slots: int = 1) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.config = loaded.model.config
        self.tokenizer = loaded.tokenizer
        self.name = loaded.name
        self.pool = SlotPool(self.model, slots) if reuse else None
        self.turns = Turns()

    def check(self, job: GenerationJob, rows: int) -> GenerationJob:
        """Resolve the decode mode against the loaded model, and refuse prompt lookup where it would change the
        tokens (`rows`: prompts x samples)."""
        try:
            decode = resolve_mode(job.decode.strip().lower(), self.model)
        except ValueError as err:
            raise InputError(str(err), field="decode") from None
        if job.prompt_lookup and not lookup_applies(job.sampling, rows):
            raise InputError(LOOKUP_NEEDS, field="prompt_lookup")
        return replace(job, decode=decode)

    def generate(self, prompts: Sequence[Sequence[int]], job: GenerationJob,
                 on_step: Callable[[Step], None] | None = None) -> GenerationRun:
        job = self.check(job, len(prompts) * job.num_samples)
        stop_ids = frozenset() if job.ignore_eos else boundary_token_ids(self.tokenizer)
        conditions = StopConditions(token_ids=stop_ids, strings=job.stop, max_new_tokens=job.max_new_tokens,
                                    context_limit=self.config.max_position_embeddings, text_filter=job.text_filter)
        generator = make_generator(job.sampling.seed, self.model.device)
        first = None

        def check_cancelled() -> None:
            if job.cancelled is not None and job.cancelled():
                raise Cancelled()

        def step_seen(step: Step) -> None:
            nonlocal first
            if first is None:
                first = time.perf_counter()
            if on_step is not None:
                on_step(step)
            check_cancelled()
            self.turns.pass_on()

        single = len(prompts) == 1 and job.num_samples == 1
        with self._slot(prompts[0] if single else None) as slot, self.turns.held():
            check_cancelled()  # (it may have waited for the slot and the turn)
            started = time.perf_counter()
            slot = slot if single else None
            if slot is not None and not job.reuse_prompt:
                slot.forget()
            completions = generate(self.model, self.tokenizer, prompts, job.sampling, conditions, job.num_samples,
                                   generator=generator, on_step=step_seen, prompt_lookup=job.prompt_lookup,
                                   decode=job.decode, heal=job.heal, slot=slot)
        end = time.perf_counter()
        first = first or end
        return GenerationRun(completions, generator.initial_seed(), first - started, end - first,
                             reused_tokens=slot.reused if slot is not None else 0)

    def _slot(self, prompt):
        return self.pool.acquire(prompt) if self.pool is not None else contextlib.nullcontext()
