"""The speed paths give the numbers of the plain path: prepacked and int8 linears, the static decode step (what a
CUDA graph replays), and prompt-lookup drafts checked in one pass (issue: speed)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from oracle import WINDOW, random_prompt, reference_greedy, windowed_pair

from sc2cli.cache import KVCache
from sc2cli.decode import resolve_mode
from sc2cli.engine import StopConditions, generate, prefill
from sc2cli.linear import GEMV_ROWS, Int8Linear, PackedLinear, packing_supported, quantize_int8
from sc2cli.lookup import PromptLookup
from sc2cli.modeling import Starcoder2ForCausalLM

@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(reference, ours prepared for inference) on the windowed checkpoint of the engine tests."""
    ref, ours = windowed_pair(tmp_path_factory.mktemp("windowed"))
    return ref, ours.prepare_for_inference()


# ---- linear kernels ----------------------------------------------------------------------------------------------

@pytest.mark.skipif(not packing_supported(torch.device("cpu"), torch.bfloat16), reason="no oneDNN bf16 here")
@pytest.mark.parametrize("rows", [1, 5, 300])
def test_packed_linear_computes_what_linear_computes(rows):
    gen = torch.Generator().manual_seed(rows)
    weight = torch.randn(96, 64, generator=gen).bfloat16()
    bias = torch.randn(96, generator=gen).bfloat16()
    x = torch.randn(2, rows, 64, generator=gen).bfloat16()
    expected = F.linear(x, weight, bias)
    got = PackedLinear(weight, bias)(x)
    assert got.shape == expected.shape
    # bf16 outputs: the same fp32 sums may round to neighbouring bf16 values, never further apart.
    assert (got.float() - expected.float()).abs().max().item() <= 2 ** -7 * expected.abs().max().item()


def test_int8_weights_round_trip_within_half_a_step():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(48, 80, generator=gen)
    weight[3] = 0.0  # an all-zero row must not divide by zero
    q, scale = quantize_int8(weight)
    assert q.dtype == torch.int8 and int(q.abs().max()) <= 127
    error = (q.float() * scale[:, None] - weight).abs()
    assert bool((error <= scale[:, None] / 2 + 1e-7).all())
    assert bool((q[3] == 0).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 4, 40])
def test_int8_linear_equals_the_dequantized_product(dtype, rows):
    gen = torch.Generator().manual_seed(rows)
    weight = torch.randn(64, 32, generator=gen).to(dtype)
    bias = torch.randn(64, generator=gen).to(dtype)
    layer = Int8Linear(weight, bias, dtype)
    x = torch.randn(rows, 32, generator=gen).to(dtype)
    expected = F.linear(x.float(), layer.dequantized(torch.float32), bias.float())
    got = layer(x).float()
    tolerance = 1e-4 if dtype == torch.float32 else 2 ** -6
    if layer.x86_packed is not None:
        # fbgemm also rounds each block of GEMV_ROWS activation rows to 8 bits (one scale per block):
        # |error| <= sum|w| * max|x in the block| / 255 per output.
        block_max = torch.cat([b.abs().amax().expand(len(b)) for b in x.float().split(GEMV_ROWS)])[:, None]
        bound = layer.dequantized(torch.float32).abs().sum(1) * block_max / 255
        assert bool(((got - expected).abs() <= bound + tolerance * expected.abs().max()).all())
        assert layer.weight_int8 is None  # the int8 weight exists once, in fbgemm's layout
        return
    assert (got - expected).abs().max().item() <= tolerance * expected.abs().max().item()
    assert layer.weight_int8.dtype == torch.int8


def test_int8_model_stays_close_and_cannot_be_saved(pair, tmp_path):
    ref, _ = pair
    ref.save_pretrained(tmp_path / "src")
    plain = Starcoder2ForCausalLM.from_pretrained(tmp_path / "src").prepare_for_inference()
    q8 = Starcoder2ForCausalLM.from_pretrained(tmp_path / "src").prepare_for_inference("int8")
    assert isinstance(q8.lm_head, Int8Linear) and isinstance(q8.model.layers[0].self_attn.qkv_kernel, Int8Linear)
    ids = torch.tensor([random_prompt(20, seed=5)])
    with torch.no_grad():
        a, b = plain(ids).logits, q8(ids).logits
    assert (a - b).abs().max().item() <= 0.05 * a.abs().max().item()
    with pytest.raises(ValueError, match="prepare_for_inference"):
        q8.save_pretrained(tmp_path / "out")
    with pytest.raises(ValueError, match="quantize"):
        Starcoder2ForCausalLM.from_pretrained(tmp_path / "src").prepare_for_inference("int4")


# ---- the static decode step ----------------------------------------------------------------------------------------

def test_static_step_equals_reference_with_padding_and_window(pair):
    ref, ours = pair
    prompts = [random_prompt(24, seed=1), random_prompt(7, seed=2)]  # left padding, and the window crossed twice
    new = 40
    got = generate(ours, None, prompts, stop=StopConditions(max_new_tokens=new), decode="static")
    assert [c.tokens for c in got] == reference_greedy(ref, prompts, new)


def test_static_step_logits_equal_eager_logits_at_every_step(pair):
    _, ours = pair
    from sc2cli.decode import EagerStep, StaticStep

    prompt = torch.tensor([random_prompt(5, seed=3)])
    caches = [KVCache(ours.config, 1, 5 + 3 * WINDOW) for _ in range(2)]
    worst = 0.0
    with torch.inference_mode():
        logits = [prefill(ours, prompt, torch.ones_like(prompt), c) for c in caches]
        steps = [EagerStep(ours, caches[0]), StaticStep(ours, caches[1])]
        position = torch.tensor([5])
        for _ in range(3 * WINDOW):  # the ring wraps twice
            token = logits[0].argmax(-1)
            logits = [step(token, position) for step in steps]
            worst = max(worst, (logits[0] - logits[1]).abs().max().item())
            position += 1
    assert worst <= 1e-5
    assert caches[0].seen == caches[1].seen
    assert sorted(caches[1].slot_columns.tolist()) == sorted(caches[0].slot_columns.tolist())


def test_decode_modes_are_checked(pair):
    _, ours = pair
    assert resolve_mode("auto", ours) == "static"  # on CPU
    for mode in ("cuda-graph", "compile"):
        with pytest.raises(ValueError, match="CUDA"):
            resolve_mode(mode, ours)
    with pytest.raises(ValueError, match="decode mode"):
        resolve_mode("turbo", ours)


# ---- prompt lookup -----------------------------------------------------------------------------------------------

def test_lookup_drafts_what_followed_the_latest_earlier_occurrence():
    lookup = PromptLookup([1, 2, 3, 4, 5, 9, 2, 3, 7, 8], draft_tokens=3)
    assert lookup.draft() == []  # the suffix (7, 8) never occurred before
    lookup.append(2)
    lookup.append(3)
    assert lookup.draft() == [7, 8, 2]  # (8, 2, 3) is new; (2, 3) last occurred at 6-7, followed by 7, 8, 2
    assert lookup.draft(limit=1) == [7]
    lookup.append(4)
    assert lookup.draft() == [5, 9, 2]  # (2, 3, 4) occurred once, at the start
    assert PromptLookup([5, 5]).draft() == []  # single-token matches are not drafted


def test_tentative_step_then_commit_equals_writing_the_kept_columns(pair):
    _, ours = pair
    prompt = torch.tensor([random_prompt(14, seed=4)])
    extra = torch.tensor([random_prompt(6, seed=5)])
    a, b = (KVCache(ours.config, 1, 40) for _ in range(2))
    with torch.inference_mode():
        prefill(ours, prompt, torch.ones_like(prompt), a)
        prefill(ours, prompt, torch.ones_like(prompt), b)
        positions = torch.arange(14, 20)[None]
        ours(extra, position_ids=positions, cache=a, tentative=True)
        a.commit(4)  # keep 4 of 6; the ring (16 slots) wraps inside the step
        ours(extra[:, :4], position_ids=positions[:, :4], cache=b)
        next_a = ours(extra[:, 4:5], position_ids=positions[:, 4:5], cache=a).logits
        next_b = ours(extra[:, 4:5], position_ids=positions[:, 4:5], cache=b).logits
    assert a.seen == b.seen == 19
    assert a.slot_columns.tolist() == b.slot_columns.tolist()
    assert (a.keys - b.keys).abs().max().item() <= 1e-5
    assert (next_a - next_b).abs().max().item() <= 1e-5


def test_prompt_lookup_checks_drafts_and_gives_exactly_the_greedy_tokens(pair, monkeypatch):
    ref, ours = pair
    # A prompt that repeats itself, so drafts are found; whether they are accepted is up to the model.
    base = random_prompt(12, seed=6)
    prompts = [base + base + base[:5]]
    new = 48
    passes = {"one": 0, "many": 0}
    forward = type(ours).forward

    def counting(self, input_ids=None, *args, **kwargs):
        passes["many" if input_ids.shape[1] > 1 else "one"] += 1
        return forward(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(type(ours), "forward", counting)
    with_lookup = generate(ours, None, prompts, stop=StopConditions(max_new_tokens=new), prompt_lookup=True)[0]
    draft_passes = passes["many"] - 1  # minus the prefill
    plain = generate(ours, None, prompts, stop=StopConditions(max_new_tokens=new), prompt_lookup=False)[0]
    assert with_lookup.tokens == plain.tokens == reference_greedy(ref, prompts, new)[0]
    assert abs(with_lookup.logprob - plain.logprob) <= 1e-3
    assert draft_passes > 0, "the repeated prompt should have produced drafts"
