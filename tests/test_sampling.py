"""sc2cli.generation.sampling against transformers' logits processors (the test-only oracle)."""

from __future__ import annotations

import math

import pytest
import torch

from sc2cli.generation.sampling import (
    SamplingParams, apply_min_p, apply_repetition_penalty, apply_temperature, apply_top_k, apply_top_p, make_generator, process_logits, sample, token_logprobs,
)

tlp = pytest.importorskip("transformers.generation.logits_process")

VOCAB = 1000
BATCH = 3


def make_logits(seed: int, quantize: bool = False) -> torch.Tensor:
    """(3, 1000) float32 logits with both signs and deliberate ties."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, VOCAB, generator=g) * 3.0
    if quantize:
        # Coarse grid: many exact ties everywhere, including at top-k / top-p boundaries.
        x = torch.round(x * 2) / 2
    # Duplicated maximum in row 0, three-way tie for the max in row 1.
    x[0, 17] = x[0, 900] = x[0].max() + 1.0
    x[1, [3, 4, 5]] = x[1].max() + 0.25
    # Row 2: a tie right at the 5th-largest value.
    top5 = torch.topk(x[2], 5).indices
    x[2, 500] = x[2, top5[-1]]
    return x.float()


def seen(seed: int, n: int = 40) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1000)
    ids = torch.randint(0, VOCAB, (BATCH, n), generator=g)
    ids[:, -5:] = ids[:, :5]  # repeated ids must be penalised only once
    ids[0, 0] = 17  # a tied max in row 0
    return ids


def assert_same(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.dtype == ref.dtype == torch.float32
    assert torch.equal(torch.isneginf(ours), torch.isneginf(ref))
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)


SEEDS = [0, 1, 2]
QUANT = [False, True]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("quantize", QUANT)
@pytest.mark.parametrize("k", [1, 2, 5, 50, 999, 1000, 5000])
def test_top_k_matches_transformers(seed, quantize, k):
    x = make_logits(seed, quantize)
    ref = tlp.TopKLogitsWarper(top_k=k)(None, x.clone())
    ours = apply_top_k(x, k)
    assert_same(ours, ref)
    assert (~torch.isneginf(ours)).sum(-1).min() >= min(k, VOCAB)  # ties only ever add tokens


def test_top_k_keeps_ties_and_zero_disables():
    x = make_logits(0)
    kept = ~torch.isneginf(apply_top_k(x, 1))
    assert kept[0].nonzero().flatten().tolist() == [17, 900]
    assert kept[1].nonzero().flatten().tolist() == [3, 4, 5]
    assert torch.equal(apply_top_k(x, 0), x)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("quantize", QUANT)
@pytest.mark.parametrize("p", [0.01, 0.1, 0.5, 0.9, 0.999, 1.0])
@pytest.mark.parametrize("t", [1.0, 0.3, 0.02])
def test_top_p_matches_transformers(seed, quantize, p, t):
    x = make_logits(seed, quantize) / t
    ref = tlp.TopPLogitsWarper(top_p=p)(None, x.clone())
    ours = apply_top_p(x, p)
    assert_same(ours, ref)
    if p == 1.0 and t == 0.02:
        # Probabilities that underflow to exactly 0 are dropped even at top_p=1.0.
        assert torch.isneginf(ours).any()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("quantize", QUANT)
@pytest.mark.parametrize("p", [0.0, 0.01, 0.05, 0.2, 0.5, 1.0])
def test_min_p_matches_transformers(seed, quantize, p):
    x = make_logits(seed, quantize)
    ref = tlp.MinPLogitsWarper(min_p=p)(None, x.clone())
    ours = apply_min_p(x, p)
    assert_same(ours, ref)
    if p == 1.0:  # only the (tied) maxima survive
        assert torch.equal(~torch.isneginf(ours), x == x.amax(-1, keepdim=True))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("t", [0.1, 0.7, 1.0, 1.3, 5.0])
def test_temperature_matches_transformers(seed, t):
    x = make_logits(seed)
    assert_same(apply_temperature(x, t), tlp.TemperatureLogitsWarper(t)(None, x.clone()))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("penalty", [0.5, 1.0, 1.1, 1.3, 2.0])
def test_repetition_penalty_matches_transformers(seed, penalty):
    x = make_logits(seed)
    ids = seen(seed)
    assert (x.gather(1, ids) < 0).any() and (x.gather(1, ids) > 0).any()
    ref = tlp.RepetitionPenaltyLogitsProcessor(penalty)(ids, x.clone())
    ours = apply_repetition_penalty(x, ids, penalty)
    assert_same(ours, ref)
    if penalty != 1.0:  # penalised exactly once, in the sign-dependent direction
        r, c = 0, ids[0, 0].item()
        v = x[r, c].item()
        expected = v * penalty if v < 0 else v / penalty
        assert ours[r, c].item() == pytest.approx(expected, rel=1e-6)
        unseen = torch.ones(VOCAB, dtype=torch.bool)
        unseen[ids[0]] = False
        assert torch.equal(ours[0, unseen], x[0, unseen])


def test_repetition_penalty_does_not_modify_input_and_ignores_out_of_vocab_ids():
    x = make_logits(4)
    before = x.clone()
    ids = torch.tensor([[1, VOCAB + 7], [2, 2], [VOCAB, 3]])
    ours = apply_repetition_penalty(x, ids, 1.5)
    assert torch.equal(x, before)
    assert_same(ours, tlp.RepetitionPenaltyLogitsProcessor(1.5)(ids, x.clone()))


def test_seen_mask_excludes_padding():
    x = make_logits(5)
    pad = 0
    row = torch.tensor([11, 12, 13, 12])
    # Row 0: `row` left-padded with the pad id; row 1: an unpadded row of the same width.
    padded = torch.cat([torch.full((3,), pad), row])
    ids = torch.stack([padded, torch.cat([row, row[:3]])])
    mask = torch.stack([padded != pad, torch.ones(7, dtype=torch.bool)])
    xb = x[:2].clone()
    xb[0, pad] = 2.5
    out = apply_repetition_penalty(xb, ids, 1.3, seen_mask=mask)
    alone = apply_repetition_penalty(xb[:1], row[None], 1.3)
    assert torch.equal(out[:1], alone)
    assert out[0, pad] == 2.5  # pad id untouched ...
    unmasked = apply_repetition_penalty(xb, ids, 1.3)
    assert unmasked[0, pad] == pytest.approx(2.5 / 1.3)  # ... which transformers would penalise
    # via process_logits too
    params = SamplingParams(repetition_penalty=1.3)
    assert torch.equal(process_logits(xb, params, ids, mask)[:1], process_logits(xb[:1], params, row[None]))


CHAIN_CASES = [
    SamplingParams(temperature=0.7, top_k=50, top_p=0.9, min_p=0.05, repetition_penalty=1.2),
    SamplingParams(temperature=1.0, top_k=0, top_p=0.95, min_p=0.0, repetition_penalty=1.0),
    SamplingParams(temperature=1.5, top_k=5000, top_p=1.0, min_p=0.1, repetition_penalty=0.8),
    SamplingParams(temperature=0.2, top_k=3, top_p=0.5, min_p=0.0, repetition_penalty=1.5),
    SamplingParams(temperature=0.9, top_k=2, top_p=0.3, min_p=0.3, repetition_penalty=1.1),
    SamplingParams(temperature=0.0, top_k=50, top_p=0.9, min_p=0.2, repetition_penalty=1.3),  # greedy
    SamplingParams(temperature=0.8, top_k=1, repetition_penalty=1.3),  # greedy via top_k=1
]


def oracle_chain(params: SamplingParams) -> "tlp.LogitsProcessorList":
    """The processor list `generate` builds for these settings (same inclusion rules)."""
    procs = []
    if params.repetition_penalty != 1.0:
        procs.append(tlp.RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    if params.temperature > 0:  # do_sample
        if params.temperature != 1.0:
            procs.append(tlp.TemperatureLogitsWarper(params.temperature))
        if params.top_k != 0:
            procs.append(tlp.TopKLogitsWarper(params.top_k))
        if params.top_p < 1.0:
            procs.append(tlp.TopPLogitsWarper(params.top_p))
        procs.append(tlp.MinPLogitsWarper(params.min_p))  # generate adds it whenever min_p is set
    return tlp.LogitsProcessorList(procs)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("quantize", QUANT)
@pytest.mark.parametrize("params", CHAIN_CASES)
def test_process_logits_matches_transformers_chain(seed, quantize, params):
    x = make_logits(seed, quantize)
    ids = seen(seed)
    ref = oracle_chain(params)(ids, x.clone())
    ours = process_logits(x, params, ids)
    if params.greedy and params.temperature > 0:
        # top_k=1 sampling in transformers keeps only the (tied) maxima; we go straight to argmax,
        # which must be one of them. Our logits are then the penalised ones, as for greedy.
        ref_kept = ~torch.isneginf(ref)
        assert ref_kept.gather(1, sample(ours, None, True)[:, None]).all()
        ref = tlp.RepetitionPenaltyLogitsProcessor(params.repetition_penalty)(ids, x.clone())
    assert_same(ours, ref)


def test_process_logits_casts_to_float32_and_leaves_input_alone():
    x = make_logits(7).to(torch.bfloat16)
    before = x.clone()
    params = SamplingParams(temperature=0.8, top_k=10, top_p=0.9, min_p=0.05, repetition_penalty=1.2)
    ids = seen(7)
    out = process_logits(x, params, ids)
    assert out.dtype == torch.float32
    assert torch.equal(x, before)
    assert_same(out, oracle_chain(params)(ids, x.float()))
    x32 = make_logits(7)
    before32 = x32.clone()
    process_logits(x32, params, ids)
    assert torch.equal(x32, before32)  # .float() is a no-op on float32: nothing may write in place


def test_top_k_1_sampling_is_argmax():
    g = torch.Generator().manual_seed(123)
    gen = make_generator(0)
    for _ in range(20):
        x = torch.randn(64, VOCAB, generator=g) * 4
        expected = x.argmax(-1)
        # The real sampling path (softmax + multinomial) over a top_k=1-filtered distribution.
        drawn = sample(apply_top_k(apply_temperature(x, 1.7), 1), gen, greedy=False)
        assert torch.equal(drawn, expected)
        params = SamplingParams(temperature=1.7, top_k=1)
        assert params.greedy
        assert torch.equal(sample(process_logits(x, params), gen, params.greedy), expected)
        assert torch.equal(sample(process_logits(x, SamplingParams()), None, True), expected)


def test_same_seed_same_samples_different_seed_different_samples():
    x = torch.randn(50, VOCAB, generator=torch.Generator().manual_seed(9)) * 0.1  # flat-ish

    def draw(seed):
        gen = make_generator(seed)
        return torch.stack([sample(x, gen, greedy=False) for _ in range(3)])

    a, b, c = draw(42), draw(42), draw(43)
    assert a.shape == (3, 50) and a.dtype == torch.long
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert (a != c).float().mean() > 0.9
    assert len(set(a.flatten().tolist())) > 50  # genuinely random, not a constant


def test_make_generator_without_seed_reports_a_reusable_seed():
    g1, g2 = make_generator(None), make_generator(None)
    assert g1.initial_seed() != g2.initial_seed()
    assert 0 <= g1.initial_seed() < 2**63
    x = torch.zeros(20, VOCAB)
    replay = make_generator(g1.initial_seed())
    assert torch.equal(sample(x, g1, False), sample(x, replay, False))
    assert make_generator(5).initial_seed() == 5


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1.0, top_k=5),
        SamplingParams(temperature=2.0, top_p=0.3),
        SamplingParams(temperature=1.0, min_p=0.5),
        SamplingParams(temperature=3.0, top_k=40, top_p=0.6, min_p=0.2, repetition_penalty=1.4),
    ],
)
def test_samples_stay_inside_the_kept_set(params):
    x = make_logits(11)[2:3].expand(200, VOCAB)
    ids = seen(11)[2:3].expand(200, -1)
    processed = process_logits(x, params, ids)
    kept = ~torch.isneginf(processed[0])
    assert 0 < kept.sum() < VOCAB
    drawn = sample(processed, make_generator(3), greedy=False)
    assert kept[drawn].all()
    if params.top_k == 5 and params.top_p == 1.0:
        assert kept.sum() == 6  # row 2 has a deliberate tie at the 5th place
        assert set(drawn.tolist()) <= set(torch.topk(x[0], 6).indices.tolist())
        assert len(set(drawn.tolist())) > 1


def test_token_logprobs_uses_the_given_distribution():
    x = torch.tensor([[2.0, 2.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0]])
    ids = torch.tensor([1, 3])
    processed = apply_top_k(x, 2)
    lp = token_logprobs(processed, ids)
    assert lp.dtype == torch.float32 and lp.shape == (2,)
    assert lp[0].item() == pytest.approx(math.log(0.5))  # two tied survivors share the mass
    assert lp[1].item() == pytest.approx(math.log(0.25))
    raw = token_logprobs(x.to(torch.bfloat16), ids)
    assert raw.dtype == torch.float32
    assert raw[0].item() < math.log(0.5)  # unfiltered: mass leaks to the other tokens


@pytest.mark.parametrize(
    "field, value",
    [
        ("temperature", -0.1),
        ("temperature", float("nan")),
        ("temperature", float("inf")),
        ("top_k", -1),
        ("top_k", 2.5),
        ("top_p", 0.0),
        ("top_p", 1.01),
        ("top_p", -0.5),
        ("min_p", -0.01),
        ("min_p", 1.5),
        ("repetition_penalty", 0.0),
        ("repetition_penalty", -1.0),
        ("seed", "abc"),
    ],
)
def test_validation_names_the_option(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_defaults_are_greedy_and_valid():
    p = SamplingParams()
    assert p.greedy
    assert not SamplingParams(temperature=0.5).greedy
    assert SamplingParams(temperature=0.5, top_k=1).greedy
    SamplingParams(temperature=0.5, top_k=0, top_p=1.0, min_p=1.0, repetition_penalty=0.1, seed=0).validate()
