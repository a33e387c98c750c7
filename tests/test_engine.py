"""The generation engine against transformers and against itself (issue: generation engine)."""

from __future__ import annotations

import pytest
import torch
from conftest import PARITY_REPORT
from oracle import WINDOW, random_prompt, reference_greedy, tiny_config, windowed_pair
from tokenizer_fixture import TEST_VOCAB_SIZE, write_test_tokenizer

from sc2cli.model.cache import KVCache
from sc2cli.generation.engine import StopConditions, generate, prefill, stream
from sc2cli.model.transformer import Starcoder2ForCausalLM
from sc2cli.generation.sampling import SamplingParams
from sc2cli.tokenizer import Tokenizer
from scripted import ScriptedModel

@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(reference, ours) on the same sharp random checkpoint with a window of 16."""
    return windowed_pair(tmp_path_factory.mktemp("windowed"))


@pytest.mark.parametrize("chunk, fused", [(512, False), (7, False), (7, True)])
def test_greedy_equals_transformers_across_the_window(pair, chunk, fused, tmp_path):
    ref, ours = pair
    if fused:
        ref.save_pretrained(tmp_path)
        ours = Starcoder2ForCausalLM.from_pretrained(tmp_path).prepare_for_inference()
    prompt = random_prompt(24, seed=1)  # the window is crossed in the prompt and again while decoding
    new = 72
    with torch.no_grad():
        expected = ref.generate(
            torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0,
        )[0, len(prompt):].tolist()
    got = generate(ours, None, [prompt], stop=StopConditions(max_new_tokens=new), prefill_chunk=chunk)[0]
    assert len(expected) == new
    assert len(set(expected[WINDOW:])) >= 8, "degenerate reference output would not exercise the cache"
    assert got.tokens == expected
    assert got.finish_reason == "length"


def test_cached_logits_equal_full_forward_at_every_step(pair):
    ref, ours = pair
    prompt = random_prompt(5, seed=2)
    steps = 3 * WINDOW  # the ring fills at 16 and wraps twice
    cache = KVCache(ours.config, 1, len(prompt) + steps)
    ids = torch.tensor([prompt])
    worst = 0.0
    with torch.no_grad():
        logits = prefill(ours, ids, torch.ones_like(ids), cache, chunk_size=3)
        for _ in range(steps):
            full = ref(ids, use_cache=False).logits[:, -1]
            worst = max(worst, (full - logits).abs().max().item())
            token = logits.argmax(-1, keepdim=True)
            ids = torch.cat([ids, token], dim=1)
            logits = ours(token, cache=cache).logits[:, -1]
    PARITY_REPORT["engine cached decode vs uncached reference (48 steps, window 16)"] = worst
    assert worst <= 1e-5
    assert cache.positions_held() == WINDOW


def test_prefill_chunk_counts_the_tokens_of_all_rows(pair):
    """A pass of a batch's prompt takes at most `chunk_size` tokens in all, so its activations do not grow with the
    batch; the logits are those of one pass over the whole prompt."""
    _, ours = pair
    ids = torch.tensor([random_prompt(10, seed=s) for s in (4, 5, 6)])
    mask = torch.ones_like(ids)
    passes = []

    def counting(*args, **kwargs):
        passes.append(tuple(args[0].shape))
        return ours(*args, **kwargs)

    with torch.no_grad():
        chunked = prefill(counting, ids, mask, KVCache(ours.config, 3, 10), chunk_size=12)
        whole = prefill(ours, ids, mask, KVCache(ours.config, 3, 10), chunk_size=30)
    assert passes == [(3, 4), (3, 4), (3, 2)]
    assert torch.allclose(chunked, whole, atol=1e-5, rtol=0)
    passes.clear()
    with torch.no_grad():
        prefill(counting, ids, mask, KVCache(ours.config, 3, 10), chunk_size=2)  # fewer tokens than rows
    assert passes == [(3, 1)] * 10


def test_ring_buffer_holds_only_the_window(pair):
    _, ours = pair
    total = 4 * WINDOW
    cache = KVCache(ours.config, 1, total)
    assert cache.keys.shape[3] == WINDOW  # capacity is the window, not the run length
    with torch.no_grad():
        prefill(ours, torch.tensor([random_prompt(total, seed=3)]), torch.ones(1, total, dtype=torch.long), cache, 10)
    assert cache.seen == total
    assert cache.positions_held() == WINDOW
    assert sorted(cache.slot_columns.tolist()) == list(range(total - WINDOW, total))


def test_left_padded_batch_rows_equal_rows_alone(pair):
    _, ours = pair
    prompts = [random_prompt(n, seed=n) for n in (30, 9, 17)]
    stop = StopConditions(max_new_tokens=40)
    batch = generate(ours, None, prompts, stop=stop, prefill_chunk=8)
    for prompt, row in zip(prompts, batch):
        alone = generate(ours, None, [prompt], stop=stop)[0]
        assert row.tokens == alone.tokens
        assert abs(row.logprob - alone.logprob) < 1e-3


def test_left_padded_batch_matches_transformers(pair):
    ref, ours = pair
    prompts = [random_prompt(n, seed=10 + n) for n in (21, 6)]
    got = [c.tokens for c in generate(ours, None, prompts, stop=StopConditions(max_new_tokens=30))]
    assert got == reference_greedy(ref, prompts, 30)


def test_samples_share_prefill_and_seed_reproduces(pair):
    _, ours = pair
    prompt = random_prompt(12, seed=4)
    stop = StopConditions(max_new_tokens=20)
    warm = SamplingParams(temperature=1.5, seed=7)
    first = generate(ours, None, [prompt], sampling=warm, stop=stop, num_samples=4)
    again = generate(ours, None, [prompt], sampling=warm, stop=stop, num_samples=4)
    other = generate(ours, None, [prompt], sampling=SamplingParams(temperature=1.5, seed=8), stop=stop, num_samples=4)
    assert [c.tokens for c in first] == [c.tokens for c in again]
    assert [c.tokens for c in first] != [c.tokens for c in other]
    assert len({tuple(c.tokens) for c in first}) > 1  # the samples differ from one another
    greedy = generate(ours, None, [prompt], stop=stop, num_samples=3)
    assert greedy[0].tokens == greedy[1].tokens == greedy[2].tokens
    top1 = generate(ours, None, [prompt], sampling=SamplingParams(temperature=0.8, top_k=1, seed=3), stop=stop)
    assert top1[0].tokens == greedy[0].tokens


def test_repetition_penalty_matches_transformers(pair):
    ref, ours = pair
    prompt = random_prompt(10, seed=5)
    with torch.no_grad():
        expected = ref.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, 10, dtype=torch.long),
                                max_new_tokens=25, do_sample=False, repetition_penalty=1.7, eos_token_id=None,
                                pad_token_id=0)[0, 10:].tolist()
    got = generate(ours, None, [prompt], sampling=SamplingParams(repetition_penalty=1.7),
                   stop=StopConditions(max_new_tokens=25))[0]
    assert got.tokens == expected


def test_stop_token_and_context_limit(pair):
    _, ours = pair
    prompt = random_prompt(8, seed=6)
    free = generate(ours, None, [prompt], stop=StopConditions(max_new_tokens=12))[0]
    stop_at = free.tokens[5]
    first = free.tokens.index(stop_at)
    stopped = generate(ours, None, [prompt], stop=StopConditions(token_ids=frozenset({stop_at}), max_new_tokens=12))[0]
    assert stopped.finish_reason == "stop"
    assert stopped.tokens == free.tokens[:first]  # the stop token itself is not part of the completion
    limited = generate(ours, None, [prompt], stop=StopConditions(max_new_tokens=100, context_limit=14))[0]
    assert limited.finish_reason == "length"
    assert len(limited.tokens) == 6
    with pytest.raises(ValueError, match="no room"):
        generate(ours, None, [prompt], stop=StopConditions(context_limit=8))


# ---- text-level behaviour with the test tokenizer and a scripted model -----------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return Tokenizer.from_file(write_test_tokenizer(tmp_path_factory.mktemp("tok")))


def _scripted(tokenizer, text: str, tail: list[int] = ()):
    from sc2cli.model.config import Starcoder2Config

    config = Starcoder2Config(**tiny_config(vocab_size=TEST_VOCAB_SIZE, sliding_window=None))
    script = tokenizer.encode(text) + list(tail)
    return ScriptedModel(config, script), script


def _run(model, tokenizer, stop: StopConditions) -> tuple[list[str], str | None]:
    model.prompt_length = None
    chunks, reason = [], None
    for step in stream(model, tokenizer, [tokenizer.encode("x")], stop=stop, prefill_chunk=64):
        chunks.append(step.text)
        reason = step.finish_reason or reason
    return chunks, reason


def test_stop_string_spanning_tokens(tokenizer):
    text = "value = compute()\nEND_OF_BLOCK\nnever"
    model, script = _scripted(tokenizer, text)
    stop_string = "\nEND_OF"
    pieces = [tokenizer.decode([t]) for t in script]
    assert not any(stop_string in p for p in pieces), "the stop string must span tokens for this test"
    chunks, reason = _run(model, tokenizer, StopConditions(strings=(stop_string,), max_new_tokens=len(script)))
    assert "".join(chunks) == "value = compute()"
    assert reason == "stop"


def test_partial_stop_prefix_is_released_when_it_does_not_match(tokenizer):
    text = "a\nEND_OK b"
    model, script = _scripted(tokenizer, text)
    chunks, reason = _run(model, tokenizer, StopConditions(strings=("\nEND_OF",), max_new_tokens=len(script)))
    assert "".join(chunks) == text
    assert reason == "length"


def test_multibyte_characters_stream_whole(tokenizer):
    text = "s = '日本語 ✓ 🚀 café'"
    model, script = _scripted(tokenizer, text)
    assert len(script) > len(text.encode("utf-8")) // 4  # byte-level pieces: characters span tokens
    chunks, _ = _run(model, tokenizer, StopConditions(max_new_tokens=len(script)))
    assert "".join(chunks) == text
    assert all("\ufffd" not in c for c in chunks)


def test_eos_stops_and_special_tokens_never_reach_the_text(tokenizer):
    sep = tokenizer.token_id("<file_sep>")
    model, _ = _scripted(tokenizer, "print(1)", tail=[sep, tokenizer.eos_id])
    chunks, reason = _run(model, tokenizer, StopConditions(token_ids=frozenset({tokenizer.eos_id}), max_new_tokens=40))
    assert "".join(chunks) == "print(1)"
    assert reason == "stop"


@pytest.mark.parametrize("raws, text, kept", [
    (["def", " f", "():", "\n", "    return"], "def f():\n", 4),  # the cut on a token boundary: exactly its tokens
    (["def", " f", "():", "\n\n", "x"], "def f():\n", 4),  # the cut inside "\n\n": that token made part of it
    (["a", " =", " 1", "\n", "b"], "a = 1", 3),  # a stop string cut the rest: not counted
    (["  ", "x"], "", 0),  # nothing kept: no tokens
])
def test_a_completion_counts_the_tokens_its_text_is_made_of(raws, text, kept):
    from sc2cli.generation.engine import kept_token_count

    assert kept_token_count(raws, text) == kept


def test_a_completion_re_indented_by_a_filter_still_counts_its_tokens():
    """Filters re-indent lines (they never add or change code or line breaks): the count follows the code."""
    from sc2cli.generation.engine import kept_token_count

    assert kept_token_count(["    if", " x", ":\n", "        y", "\n", "z"], "if x:\n    y\n") == 5
