"""Our model against transformers: same checkpoint, same numbers, in both directions (issue: model parity)."""

from __future__ import annotations

import pytest
import torch
from conftest import PARITY_REPORT
from oracle import load_reference, reference_model, tiny_config

from sc2cli import model as modeling
from sc2cli.model.config import HIDDEN_ACTS

FP32_TOL = 1e-5
SEQ = 24

ROPE_CASES = {
    "rope-linear": dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}),
    "rope-dynamic": dict(max_position_embeddings=16, rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}),
    "rope-yarn": dict(
        max_position_embeddings=32,
        rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8, "rope_theta": 10000.0},
    ),
    "rope-yarn-mscale": dict(
        rope_parameters={
            "rope_type": "yarn", "factor": 3.0, "original_max_position_embeddings": 8, "rope_theta": 500.0,
            "mscale": 0.8, "mscale_all_dim": 0.5, "beta_fast": 16, "beta_slow": 2,
        },
    ),
    "rope-longrope": dict(
        max_position_embeddings=64,
        rope_parameters={
            "rope_type": "longrope", "original_max_position_embeddings": 16, "rope_theta": 10000.0,
            "short_factor": [1.0 + 0.1 * i for i in range(4)], "long_factor": [2.0 + 0.5 * i for i in range(4)],
        },
    ),
    "rope-llama3": dict(
        max_position_embeddings=64,
        rope_parameters={
            "rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 16, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "rope_theta": 10000.0,
        },
    ),
    "rope-theta-3b": dict(rope_theta=999999.4420358813),
}

# Every hidden_act the config accepts (gelu_pytorch_tanh, the default, runs in all the other cases too).
ACTIVATION_CASES = {f"act-{name}": dict(hidden_act=name) for name in HIDDEN_ACTS}

CONFIGS = {
    "gqa": {},
    "mha": dict(num_key_value_heads=4),
    "mqa": dict(num_key_value_heads=1),
    "no-bias": dict(use_bias=False),
    "untied": dict(tie_word_embeddings=False),
    "window-5": dict(sliding_window=5),
    "window-5-mqa-untied": dict(sliding_window=5, num_key_value_heads=1, tie_word_embeddings=False),
    "head-dim-16": dict(head_dim=16),
    "three-layers-gelu-tanh": dict(num_hidden_layers=3, hidden_act="gelu_pytorch_tanh"),
    **ACTIVATION_CASES,
    **ROPE_CASES,
}


def _ids(batch: int, length: int, vocab: int = 99, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (batch, length), generator=gen)  # 0 is the pad id


def _record(case: str, diff: float) -> float:
    PARITY_REPORT[case] = max(diff, PARITY_REPORT.get(case, 0.0))
    return diff


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_causal_lm_reference_to_ours(name, tmp_path):
    config = tiny_config(**CONFIGS[name])
    ref = reference_model("Starcoder2ForCausalLM", **config)
    ref.save_pretrained(tmp_path)
    ours = modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path)
    ids = _ids(2, SEQ)
    labels = ids.clone()
    labels[:, :3] = -100
    with torch.no_grad():
        expected = ref(ids, labels=labels, use_cache=False, output_hidden_states=True)
        got = ours(ids, labels=labels, output_hidden_states=True)
    diff = _record(f"causal-lm {name}", _max_diff(expected.logits, got.logits))
    assert diff <= FP32_TOL
    assert abs(expected.loss.item() - got.loss.item()) <= FP32_TOL
    assert len(got.hidden_states) == len(expected.hidden_states) == config["num_hidden_layers"] + 1
    for h_ref, h_ours in zip(expected.hidden_states, got.hidden_states):
        assert _max_diff(h_ref, h_ours) <= FP32_TOL
    assert torch.equal(expected.logits.argmax(-1), got.logits.argmax(-1))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_causal_lm_ours_to_reference(name, tmp_path):
    config = tiny_config(**CONFIGS[name])
    ref_source = reference_model("Starcoder2ForCausalLM", seed=3, **config)
    ref_source.save_pretrained(tmp_path / "src")
    ours = modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path / "src")
    ours.save_pretrained(tmp_path / "ours")
    ref = load_reference("Starcoder2ForCausalLM", tmp_path / "ours")
    assert ref.config.rope_parameters["rope_type"] == ours.config.rope_type
    ids = _ids(2, SEQ, seed=2)
    with torch.no_grad():
        diff = _record(f"causal-lm {name} (ours saved, transformers loads)", _max_diff(ref(ids).logits, ours(ids).logits))
    assert diff <= FP32_TOL


@pytest.mark.parametrize("name", HIDDEN_ACTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_activations_compute_what_the_reference_computes(name, dtype):
    """Bit for bit: the tanh forms agree mathematically but round differently, so each must be the reference's."""
    from transformers.activations import ACT2FN

    from sc2cli.model.transformer import ACTIVATIONS

    x = torch.linspace(-8, 8, 4001).to(dtype)
    assert torch.equal(ACTIVATIONS[name](x), ACT2FN[name](x))


def test_exact_gelu_is_told_apart_from_the_tanh_approximation(tmp_path):
    """The parity bound is sharp enough to see which GELU ran: the erf and tanh forms differ by ~1e-3."""
    ref = reference_model("Starcoder2ForCausalLM", **tiny_config(hidden_act="gelu"))
    ref.save_pretrained(tmp_path)
    tanh = modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path, hidden_act="gelu_pytorch_tanh")
    exact = modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path)
    ids = _ids(2, SEQ)
    with torch.no_grad():
        expected = ref(ids, use_cache=False).logits
        assert _max_diff(expected, exact(ids).logits) <= FP32_TOL
        assert _max_diff(expected, tanh(ids).logits) > 100 * FP32_TOL


def test_base_model_both_directions(tmp_path):
    config = tiny_config(sliding_window=6)
    ref = reference_model("Starcoder2Model", **config)
    ref.save_pretrained(tmp_path / "ref")
    ours = modeling.Starcoder2Model.from_pretrained(tmp_path / "ref")
    ids = _ids(3, SEQ)
    with torch.no_grad():
        diff = _record("base-model", _max_diff(ref(ids, use_cache=False).last_hidden_state, ours(ids).last_hidden_state))
    assert diff <= FP32_TOL
    ours.save_pretrained(tmp_path / "ours")
    back = load_reference("Starcoder2Model", tmp_path / "ours")
    with torch.no_grad():
        assert _max_diff(back(ids).last_hidden_state, ours(ids).last_hidden_state) <= FP32_TOL


def test_base_model_loads_from_causal_lm_checkpoint(tmp_path):
    ref = reference_model("Starcoder2ForCausalLM", **tiny_config())
    ref.save_pretrained(tmp_path)
    ours = modeling.Starcoder2Model.from_pretrained(tmp_path)
    ids = _ids(1, 10)
    with torch.no_grad():
        expected = ref.model(ids, use_cache=False).last_hidden_state
        assert _max_diff(expected, ours(ids).last_hidden_state) <= FP32_TOL


def _padded_batch(padding_side: str):
    lengths = [SEQ, 15, 9]
    ids = torch.zeros(3, SEQ, dtype=torch.long)
    mask = torch.zeros(3, SEQ, dtype=torch.long)
    gen = torch.Generator().manual_seed(5)
    for row, n in enumerate(lengths):
        tokens = torch.randint(1, 99, (n,), generator=gen)
        cols = slice(SEQ - n, SEQ) if padding_side == "left" else slice(0, n)
        ids[row, cols] = tokens
        mask[row, cols] = 1
    return ids, mask


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("problem", ["single_label_classification", "multi_label_classification", "regression"])
def test_sequence_classification(padding_side, problem, tmp_path):
    num_labels = 1 if problem == "regression" else 3
    config = tiny_config(num_labels=num_labels, sliding_window=7, problem_type=problem)
    ref = reference_model("Starcoder2ForSequenceClassification", **config)
    ref.save_pretrained(tmp_path)
    ours = modeling.Starcoder2ForSequenceClassification.from_pretrained(tmp_path)
    ids, mask = _padded_batch(padding_side)
    if problem == "single_label_classification":
        labels = torch.tensor([0, 2, 1])
    elif problem == "multi_label_classification":
        labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    else:
        labels = torch.tensor([0.5, -1.0, 2.0])
    with torch.no_grad():
        expected = ref(ids, attention_mask=mask, labels=labels, use_cache=False)
        got = ours(ids, attention_mask=mask, labels=labels)
    diff = _record(f"seq-cls {problem} {padding_side}-padded", _max_diff(expected.logits, got.logits))
    assert diff <= FP32_TOL
    assert abs(expected.loss.item() - got.loss.item()) <= FP32_TOL
    assert got.logits.shape == (3, num_labels)


def test_sequence_classification_infers_problem_type_and_pools_last_real_token(tmp_path):
    config = tiny_config(num_labels=3)
    ref = reference_model("Starcoder2ForSequenceClassification", **config)
    ref.save_pretrained(tmp_path)
    ours = modeling.Starcoder2ForSequenceClassification.from_pretrained(tmp_path)
    ids, mask = _padded_batch("right")
    with torch.no_grad():
        got = ours(ids, attention_mask=mask, labels=torch.tensor([1, 0, 2]))
        alone = ours(ids[2:, :9])
    assert ours.config.problem_type == "single_label_classification"
    assert _max_diff(got.logits[2], alone.logits[0]) <= FP32_TOL


def test_sequence_classification_without_pad_id_rejects_batches(tmp_path):
    ref = reference_model("Starcoder2ForSequenceClassification", **tiny_config(pad_token_id=None))
    ref.save_pretrained(tmp_path)
    ours = modeling.Starcoder2ForSequenceClassification.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="padding token"):
        ours(_ids(2, 5))
    assert ours(_ids(1, 5)).logits.shape == (1, 2)


@pytest.mark.parametrize("bias", [True, False])
def test_token_classification(bias, tmp_path):
    config = tiny_config(num_labels=5, sliding_window=4, token_classification_bias=bias)
    ref = reference_model("Starcoder2ForTokenClassification", **config)
    ref.save_pretrained(tmp_path)
    ours = modeling.Starcoder2ForTokenClassification.from_pretrained(tmp_path)
    assert (ours.score.bias is not None) == bias
    assert ours.dropout.p == 0.1
    ids = _ids(2, SEQ)
    labels = torch.randint(0, 5, (2, SEQ), generator=torch.Generator().manual_seed(9))
    labels[0, :4] = -100
    with torch.no_grad():
        expected = ref(ids, labels=labels, use_cache=False)
        got = ours(ids, labels=labels)
    diff = _record(f"token-cls bias={bias}", _max_diff(expected.logits, got.logits))
    assert diff <= FP32_TOL
    assert abs(expected.loss.item() - got.loss.item()) <= FP32_TOL
    ours.save_pretrained(tmp_path / "ours")
    back = load_reference("Starcoder2ForTokenClassification", tmp_path / "ours")
    with torch.no_grad():
        assert _max_diff(back(ids).logits, got.logits) <= FP32_TOL


def test_padding_mask_and_explicit_positions_match_reference(tmp_path):
    ref = reference_model("Starcoder2ForCausalLM", **tiny_config(sliding_window=6))
    ref.save_pretrained(tmp_path)
    ours = modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path)
    ids, mask = _padded_batch("left")
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = ref(ids, attention_mask=mask, position_ids=positions, use_cache=False).logits
        got = ours(ids, attention_mask=mask, position_ids=positions).logits
    real = mask.bool()  # padded query rows are arbitrary in both implementations
    diff = _record("causal-lm left-padded with positions", _max_diff(expected[real], got[real]))
    assert diff <= FP32_TOL


def test_inputs_embeds_equal_input_ids(tmp_path):
    ref = reference_model("Starcoder2ForCausalLM", **tiny_config())
    ref.save_pretrained(tmp_path)
    ours = modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path)
    ids = _ids(1, 12)
    with torch.no_grad():
        embeds = ours.model.embed_tokens(ids)
        assert torch.equal(ours(inputs_embeds=embeds).logits, ours(ids).logits)
    with pytest.raises(ValueError, match="exactly one"):
        ours()


def test_dropout_active_only_in_training(tmp_path):
    config = tiny_config(attention_dropout=0.3, residual_dropout=0.3, embedding_dropout=0.3)
    ref = reference_model("Starcoder2ForCausalLM", **config)
    ref.save_pretrained(tmp_path)
    ours = modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path)
    ids = _ids(1, 12)
    with torch.no_grad():
        assert _max_diff(ref(ids, use_cache=False).logits, ours(ids).logits) <= FP32_TOL  # eval: no dropout
        ours.train()
        torch.manual_seed(0)
        first = ours(ids).logits
        second = ours(ids).logits
    assert _max_diff(first, second) > 1e-3


def test_bfloat16_matches_reference_in_bfloat16(tmp_path):
    """Both sides in bf16: they round differently (SDPA vs eager), so the bound is relative to the logit scale."""
    config = tiny_config(sliding_window=8, hidden_size=64, intermediate_size=96)
    ref = reference_model("Starcoder2ForCausalLM", **config)
    ref.save_pretrained(tmp_path)
    ref_bf16 = load_reference("Starcoder2ForCausalLM", tmp_path, dtype=torch.bfloat16)
    ours = modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert ours.dtype == torch.bfloat16
    ids = _ids(2, SEQ)
    with torch.no_grad():
        expected, got = ref_bf16(ids).logits, ours(ids).logits
        exact = ours.float()(ids).logits
    assert got.dtype == torch.bfloat16
    scale = exact.abs().max().item()
    diff = _record("causal-lm bfloat16 vs bfloat16 (relative to max |logit|)", _max_diff(expected, got) / scale)
    assert diff <= 2e-2
    # Our bf16 is as close to the fp32 truth as the reference's bf16 is.
    assert _max_diff(got, exact) <= 1.5 * _max_diff(expected, exact) + 1e-3 * scale


@pytest.mark.parametrize("name", ["gqa", "mqa", "no-bias", "window-5-mqa-untied"])
def test_inference_preparation_keeps_numbers_and_checkpoint_names(name, tmp_path):
    """Fused q/k/v (inference) gives the same logits, and saving still writes the reference layout."""
    config = tiny_config(**CONFIGS[name])
    ref = reference_model("Starcoder2ForCausalLM", **config)
    ref.save_pretrained(tmp_path / "ref")
    ours = modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path / "ref").prepare_for_inference()
    assert ours.model.layers[0].self_attn.qkv_weight is not None
    ids = _ids(2, SEQ)
    with torch.no_grad():
        diff = _record(f"causal-lm {name} fused qkv", _max_diff(ref(ids).logits, ours(ids).logits))
    assert diff <= FP32_TOL
    ours.save_pretrained(tmp_path / "ours")
    back = load_reference("Starcoder2ForCausalLM", tmp_path / "ours")
    assert set(back.state_dict()) == set(ref.state_dict())
    with torch.no_grad():
        assert _max_diff(back(ids).logits, ref(ids).logits) <= FP32_TOL
