"""Prompt reuse (generation/slots.py): a slot keeps its KV cache between runs, and a prompt that starts like the
last one evaluates only the rest. Reuse never changes a result: tokens and log-probabilities equal a cold run's,
across the sliding window too, and against the reference."""

from __future__ import annotations

import pytest
import torch
from oracle import WINDOW, random_prompt, reference_greedy, windowed_pair

from sc2cli.generation.engine import StopConditions, generate
from sc2cli.generation.slots import Slot

NEW = 24


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return windowed_pair(tmp_path_factory.mktemp("slots"))


def _run(model, prompt, slot=None, decode="auto", lookup=False):
    stop = StopConditions(max_new_tokens=NEW)
    return generate(model, None, [prompt], stop=stop, slot=slot, decode=decode, prompt_lookup=lookup)[0]


def _edits(base: list[int]) -> list[list[int]]:
    """What an editor sends while a user types: the same start, then one more token, a changed token near the
    end, a prompt shorter than the last run, one far past the window, and one that shares nothing."""
    longer = base + [51]
    changed = base[:-3] + [60, 61, 62]
    shorter = base[:-10]
    far = base + random_prompt(3 * WINDOW, seed=9)
    unrelated = random_prompt(len(base), seed=10)
    return [base, longer, changed, shorter, far, far + [44], unrelated]


@pytest.mark.parametrize("decode", ["eager", "static"])
@pytest.mark.parametrize("lookup", [False, True])
def test_reused_runs_equal_cold_runs_across_the_window(pair, decode, lookup):
    _, ours = pair
    ours = ours.eval()
    slot = Slot(ours, reserve=2 * WINDOW + NEW)
    reused = []
    for prompt in _edits(random_prompt(3 * WINDOW, seed=8)):
        warm = _run(ours, prompt, slot, decode, lookup)
        cold = _run(ours, prompt, None, decode, lookup)
        assert warm.tokens == cold.tokens
        assert warm.logprob == pytest.approx(cold.logprob, abs=1e-4)
        reused.append(slot.reused)
    # The first run has nothing to reuse; each edit reuses its common start; the unrelated prompt nothing.
    assert reused[0] == 0 and reused[-1] == 0
    assert reused[1] == 3 * WINDOW  # the whole last prompt (the generated tokens differ from the new one)
    assert reused[2] == 3 * WINDOW - 3 and reused[3] == 3 * WINDOW - 11
    assert reused[5] == len(_edits(random_prompt(3 * WINDOW, seed=8))[4])  # the previous prompt, whole


def test_reuse_agrees_with_the_reference(pair):
    ref, ours = pair
    slot = Slot(ours.eval(), reserve=64)
    base = random_prompt(40, seed=3)
    for prompt in (base, base[:-2] + [70, 71]):
        assert _run(ours, prompt, slot).tokens == reference_greedy(ref, [prompt], NEW)[0]
    assert slot.reused == 38


def test_a_start_whose_window_was_overwritten_is_evaluated_again(pair):
    """The ring keeps the window plus `reserve` columns: giving up more than that starts from the first token,
    with the same result."""
    _, ours = pair
    slot = Slot(ours.eval(), reserve=4)
    base = random_prompt(50, seed=4)
    _run(ours, base, slot)  # the cache now holds 50 + NEW - 1 columns, far more than 4 past any cut
    edited = base[:30] + [77]
    assert _run(ours, edited, slot).tokens == _run(ours, edited).tokens
    assert slot.reused == 0
    assert slot.cache.capacity == WINDOW + 4


def test_a_run_broken_off_leaves_the_slot_consistent(pair):
    """A client that leaves stops the stream: the slot keeps exactly what its cache holds, and the next run is
    still exact."""
    _, ours = pair
    slot = Slot(ours.eval(), reserve=64)
    prompt = random_prompt(30, seed=5)
    steps = generate.__globals__["stream"](ours, None, [prompt], stop=StopConditions(max_new_tokens=NEW), slot=slot)
    for _ in range(5):
        next(steps)
    steps.close()
    assert len(slot.tokens) == slot.cache.seen and slot.tokens[:30] == prompt
    again = prompt + [45]
    assert _run(ours, again, slot).tokens == _run(ours, again).tokens and slot.reused == 30


def test_the_library_keeps_a_slot_per_loaded_model(tmp_path):
    """`sc2cli.load` keeps the cache between calls: the second infill at the same place reuses its prompt."""
    import sc2cli

    model = sc2cli.load("sc2-tiny", device="cpu", dtype="float32")
    prefix = "def add(a, b):\n    return "
    first = sc2cli.infill(prefix, "\n\nprint(add(1, 2))\n", model=model, max_new_tokens=8)
    second = sc2cli.infill(prefix + "a", "\n\nprint(add(1, 2))\n", model=model, max_new_tokens=8)
    assert first.run.reused_tokens == 0 and second.run.reused_tokens > 5
    cold = sc2cli.infill(prefix + "a", "\n\nprint(add(1, 2))\n", model=sc2cli.load("sc2-tiny", device="cpu",
                                                                                     dtype="float32"),
                         max_new_tokens=8)
    assert second.text == cold.text and torch.tensor(second.best.tokens).equal(torch.tensor(cold.best.tokens))
