"""Starcoder2Config against transformers' class: defaults, both rope spellings, validation, round trips, presets."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
import transformers
from oracle import tiny_config

from sc2cli import model as modeling
from sc2cli.model.config import DEFAULTS, HIDDEN_ACTS, POSITIVE_INT_FIELDS, Starcoder2Config
from sc2cli.model.presets import PRESETS, preset_config

# The fields Starcoder2Config itself declares in transformers 5.x (base-config fields are checked separately).
REF_FIELDS = [name for name in transformers.Starcoder2Config.__annotations__ if name != "rope_parameters"]

# Keys found in released config.json files that the reference ignores (spec §1.1, §1.7).
IGNORED_CHECKPOINT_KEYS = {
    "mlp_type": "default",
    "norm_type": "layer_norm",
    "activation_function": "gelu",
    "layer_norm_epsilon": 1e-5,
    "attention_softmax_in_fp32": True,
    "scale_attention_softmax_in_fp32": True,
    "scale_attn_weights": True,
    "rms_norm_eps": 1e-5,
    "_name_or_path": "/aot/checkpoints/15b/config.json",
    "transformers_version": "4.37.0.dev0",
    "architectures": ["Starcoder2ForCausalLM"],
    "torch_dtype": "bfloat16",
}

# config.json of bigcode/starcoder2-3b (spec §1.7).
STARCODER2_3B_JSON = {
    "architectures": ["Starcoder2ForCausalLM"], "attention_dropout": 0.1, "residual_dropout": 0.1,
    "embedding_dropout": 0.1, "bos_token_id": 0, "eos_token_id": 0, "hidden_act": "gelu_pytorch_tanh",
    "hidden_size": 3072, "initializer_range": 0.018042, "intermediate_size": 12288, "max_position_embeddings": 16384,
    "mlp_type": "default", "model_type": "starcoder2", "norm_epsilon": 1e-05, "norm_type": "layer_norm",
    "num_attention_heads": 24, "num_hidden_layers": 30, "num_key_value_heads": 2, "rope_theta": 999999.4420358813,
    "sliding_window": 4096, "transformers_version": "4.37.0.dev0", "use_bias": True, "use_cache": True,
    "vocab_size": 49152,
}


def _reference_config(**kwargs) -> transformers.Starcoder2Config:
    return transformers.Starcoder2Config(**kwargs)


def _without_legacy_type(params: dict) -> dict:
    """transformers keeps a legacy `type` key next to `rope_type`; we drop it."""
    return {k: v for k, v in params.items() if k != "type"}


# ---- defaults ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", REF_FIELDS)
def test_field_default_equals_reference(field):
    ours, ref = Starcoder2Config(), _reference_config()
    assert field in DEFAULTS
    assert getattr(ours, field) == getattr(ref, field)
    assert type(getattr(ours, field)) is type(getattr(ref, field))


def test_rope_and_label_defaults_equal_reference():
    ours, ref = Starcoder2Config(), _reference_config()
    assert ours.rope_parameters == ref.rope_parameters == {"rope_theta": 10000.0, "rope_type": "default"}
    assert ours.rope_type == "default" and ours.rope_theta == 10000.0
    assert ours.problem_type is None and ref.problem_type is None
    assert ours.id2label == ref.id2label == {0: "LABEL_0", 1: "LABEL_1"}
    assert ours.label2id == ref.label2id
    assert ours.num_labels == ref.num_labels == 2
    assert ours.head_dim is None and not hasattr(ref, "head_dim")
    assert ours.head_size == 3072 // 24 == 128
    assert ours.num_key_value_groups == 12


# ---- rope spellings -----------------------------------------------------------------------------------------------

LINEAR = {"rope_type": "linear", "factor": 2.0, "rope_theta": 5e5}

ROPE_SPELLINGS = {
    "absent": ({}, {"rope_theta": 10000.0, "rope_type": "default"}),
    "v4-theta-only": (dict(rope_theta=5e5), {"rope_theta": 5e5, "rope_type": "default"}),
    "v4-scaling-type": (dict(rope_theta=5e5, rope_scaling={"type": "linear", "factor": 2.0}), LINEAR),
    "v4-scaling-rope_type": (dict(rope_theta=5e5, rope_scaling={"rope_type": "linear", "factor": 2.0}), LINEAR),
    "v4-scaling-null": (dict(rope_theta=5e5, rope_scaling=None), {"rope_theta": 5e5, "rope_type": "default"}),
    "v5": (dict(rope_parameters=dict(LINEAR)), LINEAR),
    "v5-default-no-theta": (dict(rope_parameters={"rope_type": "default"}), {"rope_theta": 10000.0, "rope_type": "default"}),
    "v5-no-theta": (dict(rope_parameters={"rope_type": "linear", "factor": 2.0}), {**LINEAR, "rope_theta": 10000.0}),
    "v5-theta-from-top-level": (dict(rope_theta=5e5, rope_parameters={"rope_type": "linear", "factor": 2.0}), LINEAR),
    "v5-dict-theta-wins": (dict(rope_theta=1.0, rope_parameters=dict(LINEAR)), LINEAR),
    "v4-dict-theta-wins": (dict(rope_theta=1.0, rope_scaling={"type": "linear", "factor": 2.0, "rope_theta": 5e5}), LINEAR),
    "v5-legacy-type-key": (dict(rope_parameters={"type": "linear", "factor": 2.0, "rope_theta": 5e5}), LINEAR),
    "3b-theta": (dict(rope_theta=999999.4420358813), {"rope_theta": 999999.4420358813, "rope_type": "default"}),
}


@pytest.mark.parametrize("case", list(ROPE_SPELLINGS))
def test_rope_spellings(case):
    kwargs, expected = ROPE_SPELLINGS[case]
    ours = Starcoder2Config(**tiny_config(**kwargs))
    assert ours.rope_parameters == expected
    assert "type" not in ours.rope_parameters
    assert not {"rope_scaling", "rope_theta", "rope_parameters"} & set(ours.extra_keys)
    ref = _reference_config(**tiny_config(**kwargs))
    assert _without_legacy_type(ref.rope_parameters) == expected


def test_v4_and_v5_spellings_give_equal_configs():
    v4 = Starcoder2Config(**tiny_config(rope_theta=5e5, rope_scaling={"type": "linear", "factor": 2.0}))
    v5 = Starcoder2Config(**tiny_config(rope_parameters=dict(LINEAR)))
    assert v4 == v5
    assert v4.to_dict() == v5.to_dict()


SCALED_ROPE = {
    "yarn": {"rope_type": "yarn", "factor": 4.0},
    "longrope": {"rope_type": "longrope", "short_factor": [1.0] * 4, "long_factor": [2.0] * 4},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0},
}


def _without(rope_type: str, key: str) -> dict:
    return {k: v for k, v in SCALED_ROPE[rope_type].items() if k != key}


@pytest.mark.parametrize("rope_type", list(SCALED_ROPE))
def test_original_max_position_embeddings_defaults_to_max_positions(rope_type):
    kwargs = tiny_config(max_position_embeddings=64, rope_parameters=dict(SCALED_ROPE[rope_type]))
    ours = Starcoder2Config(**kwargs)
    assert ours.rope_parameters["original_max_position_embeddings"] == 64
    assert ours.rope_parameters["rope_theta"] == 10000.0
    assert _without_legacy_type(_reference_config(**kwargs).rope_parameters) == ours.rope_parameters
    # Through the v4 spelling too.
    legacy = Starcoder2Config(**tiny_config(max_position_embeddings=64, rope_scaling=dict(SCALED_ROPE[rope_type])))
    assert legacy.rope_parameters == ours.rope_parameters


@pytest.mark.parametrize("rope_type", list(SCALED_ROPE))
def test_original_max_position_embeddings_explicit_and_top_level_priority(rope_type):
    explicit = dict(SCALED_ROPE[rope_type], original_max_position_embeddings=16)
    ours = Starcoder2Config(**tiny_config(max_position_embeddings=64, rope_parameters=explicit))
    assert ours.rope_parameters["original_max_position_embeddings"] == 16
    # Spec §1.3 step 4: a top-level key (Phi-3 style) takes priority over the dict and the default.
    top = Starcoder2Config(**tiny_config(max_position_embeddings=64, rope_parameters=explicit,
                                         original_max_position_embeddings=32))
    assert top.rope_parameters["original_max_position_embeddings"] == 32
    assert top.original_max_position_embeddings == 32  # kept as an unknown key and saved back
    assert Starcoder2Config.from_dict(json.loads(top.to_json_string())) == top


@pytest.mark.parametrize("rope_type", ["default", "linear", "dynamic"])
def test_unscaled_rope_types_get_no_original_length(rope_type):
    params = {"rope_type": rope_type} if rope_type == "default" else {"rope_type": rope_type, "factor": 2.0}
    ours = Starcoder2Config(**tiny_config(rope_parameters=params, original_max_position_embeddings=8))
    assert "original_max_position_embeddings" not in ours.rope_parameters


def test_rope_parameters_input_is_not_mutated():
    params = {"type": "linear", "factor": 2.0}
    Starcoder2Config(**tiny_config(rope_scaling=params))
    assert params == {"type": "linear", "factor": 2.0}


# ---- unknown and ignored keys -----------------------------------------------------------------------------------


def test_unknown_keys_kept_and_written_back():
    config = Starcoder2Config(**tiny_config(my_setting={"a": [1, 2]}, head_dim=16))
    assert config.my_setting == {"a": [1, 2]}
    data = config.to_dict()
    assert data["my_setting"] == {"a": [1, 2]}
    assert data["head_dim"] == 16
    assert Starcoder2Config.from_dict(data).my_setting == {"a": [1, 2]}


def test_auto_map_dropped():
    config = Starcoder2Config.from_dict({**tiny_config(), "auto_map": {"AutoModel": "evil.Model"}})
    assert not hasattr(config, "auto_map")
    assert "auto_map" not in config.to_dict()


def test_ignored_checkpoint_keys_survive_round_trip(tmp_path):
    config = Starcoder2Config.from_dict({**tiny_config(), **IGNORED_CHECKPOINT_KEYS})
    for key, value in IGNORED_CHECKPOINT_KEYS.items():
        assert getattr(config, key) == value
    # They never change what runs: the norm eps and activation come from norm_epsilon / hidden_act.
    assert config.norm_epsilon == 1e-5 and config.hidden_act == "gelu_pytorch_tanh"
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    for key, value in IGNORED_CHECKPOINT_KEYS.items():
        assert saved[key] == value
    assert Starcoder2Config.from_pretrained(tmp_path) == config


@pytest.mark.parametrize("key", ["head_size", "rope_type", "num_key_value_groups", "validate", "to_dict", "extra_keys"])
def test_keys_clashing_with_derived_values_rejected(key):
    with pytest.raises(ValueError, match=key):
        Starcoder2Config(**tiny_config(**{key: 1}))


# ---- round trips ------------------------------------------------------------------------------------------------

ROUND_TRIP_CASES = {
    "defaults": {},
    "tiny": tiny_config(),
    "untied-window-head-dim": tiny_config(tie_word_embeddings=False, sliding_window=7, head_dim=16),
    "yarn": tiny_config(rope_parameters={"rope_type": "yarn", "factor": 4.0, "beta_fast": 16, "rope_theta": 500.0}),
    "longrope": tiny_config(rope_parameters=SCALED_ROPE["longrope"], max_position_embeddings=64),
    "llama3-v4": tiny_config(rope_theta=123.0, rope_scaling={**_without("llama3", "rope_type"), "type": "llama3"}),
    "labels": tiny_config(id2label={"0": "neg", "1": "pos", "2": "mixed"}, problem_type="single_label_classification"),
    "num-labels-0": tiny_config(num_labels=0),
    "eos-list": tiny_config(eos_token_id=[0, 5], pad_token_id=None),
    "extras": {**tiny_config(), **IGNORED_CHECKPOINT_KEYS, "custom": {"nested": [1, {"x": None}]}},
    "3b-json": STARCODER2_3B_JSON,
}


@pytest.mark.parametrize("case", list(ROUND_TRIP_CASES))
def test_to_dict_from_dict_round_trip(case):
    config = Starcoder2Config.from_dict(ROUND_TRIP_CASES[case])
    data = config.to_dict()
    assert json.loads(json.dumps(data)) == json.loads(config.to_json_string())  # JSON-serialisable
    again = Starcoder2Config.from_dict(data)
    assert again == config
    assert again.to_dict() == data
    assert again.rope_parameters == config.rope_parameters
    assert again.id2label == config.id2label
    assert again.extra_keys == config.extra_keys


@pytest.mark.parametrize("case", list(ROUND_TRIP_CASES))
def test_save_and_from_pretrained_round_trip(case, tmp_path):
    config = Starcoder2Config.from_dict(ROUND_TRIP_CASES[case])
    path = config.save_pretrained(tmp_path / "ckpt")
    assert path == tmp_path / "ckpt" / "config.json"
    loaded = Starcoder2Config.from_pretrained(tmp_path / "ckpt")
    assert loaded == config
    assert Starcoder2Config.from_pretrained(path) == config  # a path to the file works too
    assert Starcoder2Config.from_json_file(path) == config


def test_copy_applies_changes_and_keeps_rest():
    config = Starcoder2Config(**tiny_config(sliding_window=7, rope_theta=5e5))
    changed = config.copy(sliding_window=9)
    assert changed.sliding_window == 9 and config.sliding_window == 7
    assert changed.rope_parameters == config.rope_parameters
    rescaled = config.copy(rope_scaling={"type": "linear", "factor": 2.0})
    assert rescaled.rope_parameters == LINEAR
    relabelled = config.copy(num_labels=3)
    assert relabelled.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}


# ---- interoperability with transformers' config class ----------------------------------------------------------

INTEROP_CASES = {
    "default-rope": tiny_config(sliding_window=6, head_dim=16, tie_word_embeddings=False),
    "3b-theta": tiny_config(rope_theta=999999.4420358813, sliding_window=4096),
    "linear-v4": tiny_config(rope_theta=5e5, rope_scaling={"type": "linear", "factor": 2.0}),
    "yarn": tiny_config(max_position_embeddings=64, rope_parameters={"rope_type": "yarn", "factor": 4.0,
                                                                     "original_max_position_embeddings": 16}),
    "labels": tiny_config(id2label={0: "a", 1: "b", 2: "c"}),
}
COMPARED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "sliding_window", "tie_word_embeddings", "use_bias",
            "bos_token_id", "eos_token_id", "pad_token_id", "norm_epsilon", "hidden_act", "id2label")


@pytest.mark.parametrize("case", list(INTEROP_CASES))
def test_transformers_reads_our_config(case, tmp_path):
    ours = Starcoder2Config(**INTEROP_CASES[case])
    ours.save_pretrained(tmp_path)
    ref = transformers.Starcoder2Config.from_pretrained(tmp_path)
    assert _without_legacy_type(ref.rope_parameters) == ours.rope_parameters
    for name in COMPARED:
        assert getattr(ref, name) == getattr(ours, name), name
    assert ref.label2id == ours.label2id
    assert getattr(ref, "head_dim", None) == ours.head_dim


@pytest.mark.parametrize("case", list(INTEROP_CASES))
def test_we_read_transformers_config(case, tmp_path):
    ref = _reference_config(**INTEROP_CASES[case])
    ref.save_pretrained(tmp_path)
    ours = Starcoder2Config.from_pretrained(tmp_path)
    assert ours.rope_parameters == _without_legacy_type(ref.rope_parameters)
    for name in COMPARED:
        assert getattr(ours, name) == getattr(ref, name), name
    assert ours.head_dim == getattr(ref, "head_dim", None)
    assert ours.transformers_version == transformers.__version__  # unknown key, kept


def test_real_3b_config_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(STARCODER2_3B_JSON))
    ours = Starcoder2Config.from_pretrained(tmp_path)
    assert ours.rope_parameters == {"rope_theta": 999999.4420358813, "rope_type": "default"}
    assert ours.tie_word_embeddings is True and ours.sliding_window == 4096 and ours.head_size == 128
    assert ours.mlp_type == "default" and ours.norm_type == "layer_norm"
    ref = transformers.Starcoder2Config.from_pretrained(tmp_path)
    assert _without_legacy_type(ref.rope_parameters) == ours.rope_parameters
    assert ours == preset_config("3b").copy(mlp_type="default", norm_type="layer_norm",
                                            transformers_version="4.37.0.dev0")


# ---- validation -------------------------------------------------------------------------------------------------

BAD_SIZES = [0, -1, 2.0, True, "8", None]

INVALID = {
    "heads-not-divisible": (dict(num_attention_heads=6, num_key_value_heads=4), "num_attention_heads"),
    "unknown-rope-type": (dict(rope_parameters={"rope_type": "ntk-magic"}), "rope_type"),
    "unknown-rope-type-v4": (dict(rope_scaling={"type": "su", "factor": 2.0}), "rope_type"),
    "linear-without-factor": (dict(rope_parameters={"rope_type": "linear"}), "factor"),
    "dynamic-without-factor": (dict(rope_scaling={"type": "dynamic"}), "factor"),
    "yarn-without-factor": (dict(rope_parameters={"rope_type": "yarn"}), "factor"),
    "llama3-without-low-freq": (dict(rope_parameters={**SCALED_ROPE["llama3"], "low_freq_factor": None}), "low_freq_factor"),
    "llama3-without-high-freq": (dict(rope_parameters=_without("llama3", "high_freq_factor")), "high_freq_factor"),
    "longrope-without-long-factor": (dict(rope_parameters={"rope_type": "longrope", "short_factor": [1.0] * 4}), "long_factor"),
    "longrope-short-factor-length": (dict(rope_parameters={**SCALED_ROPE["longrope"], "short_factor": [1.0] * 3}), "short_factor"),
    "longrope-long-factor-length": (dict(rope_parameters={**SCALED_ROPE["longrope"], "long_factor": [1.0] * 8}), "long_factor"),
    "rope-factor-negative": (dict(rope_parameters={"rope_type": "linear", "factor": -2.0}), "factor"),
    "rope-theta-zero": (dict(rope_theta=0), "rope_theta"),
    "rope-theta-nan": (dict(rope_parameters={"rope_type": "default", "rope_theta": math.nan}), "rope_theta"),
    "rope-theta-string": (dict(rope_theta="1e4"), "rope_theta"),
    "rope-parameters-not-object": (dict(rope_parameters="default"), "rope_parameters"),
    "rope-scaling-not-object": (dict(rope_scaling=[1, 2]), "rope_scaling"),
    "head-dim-odd": (dict(head_dim=7), "head_dim"),
    "head-dim-zero": (dict(head_dim=0), "head_dim"),
    "head-dim-bool": (dict(head_dim=True), "head_dim"),
    "hidden-act": (dict(hidden_act="relu"), "hidden_act"),
    "hidden-act-python-tanh": (dict(hidden_act="gelu_python_tanh"), "hidden_act"),  # a reference name sc2 lacks
    "hidden-act-not-string": (dict(hidden_act=["gelu"]), "hidden_act"),
    "dropout-above-one": (dict(attention_dropout=1.5), "attention_dropout"),
    "dropout-negative": (dict(residual_dropout=-0.1), "residual_dropout"),
    "norm-epsilon": (dict(norm_epsilon=0), "norm_epsilon"),
    "problem-type": (dict(problem_type="ranking"), "problem_type"),
    "single-label-one-label": (dict(problem_type="single_label_classification", num_labels=1), "problem_type"),
    "id2label-keys": (dict(id2label={"first": "a"}), "id2label"),
    "id2label-not-object": (dict(id2label=["a", "b"]), "id2label"),
    "num-labels-negative": (dict(num_labels=-1), "num_labels"),
    **{f"sliding-window-{v!r}": (dict(sliding_window=v), "sliding_window") for v in [0, -1, 2.5, True, "4096"]},
    **{f"{field}-{v!r}": (dict(**{field: v}), field) for field in POSITIVE_INT_FIELDS for v in BAD_SIZES},
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_config_raises_value_error_naming_field(case):
    overrides, field = INVALID[case]
    with pytest.raises(ValueError, match=re.escape(field)):
        Starcoder2Config(**tiny_config(**overrides))
    with pytest.raises(ValueError, match=re.escape(field)):
        Starcoder2Config.from_dict(json.loads(json.dumps(tiny_config(**overrides), allow_nan=True)))


@pytest.mark.parametrize("name", HIDDEN_ACTS)
def test_every_accepted_activation_is_one_the_model_computes(name):
    from sc2cli.model.transformer import ACTIVATIONS

    assert Starcoder2Config(**tiny_config(hidden_act=name)).hidden_act == name
    assert name in ACTIVATIONS  # (each is checked against the reference in test_parity)


def test_unsupported_activation_error_lists_the_supported_ones():
    with pytest.raises(ValueError, match="gelu_pytorch_tanh, gelu_new, gelu_fast, gelu"):
        Starcoder2Config(**tiny_config(hidden_act="silu"))


def test_valid_edge_values_accepted():
    assert Starcoder2Config(**tiny_config(sliding_window=1)).sliding_window == 1
    assert Starcoder2Config(**tiny_config(num_key_value_heads=1)).num_key_value_groups == 4
    assert Starcoder2Config(**tiny_config(rope_theta=1000000)).rope_theta == 1000000  # a JSON int
    assert Starcoder2Config(**tiny_config(attention_dropout=1)).attention_dropout == 1


@pytest.mark.parametrize("model_type", ["llama", "starcoder", "gpt_bigcode", None])
def test_from_dict_rejects_other_model_types(model_type):
    with pytest.raises(ValueError, match="model_type"):
        Starcoder2Config.from_dict({**tiny_config(), "model_type": model_type})


def test_from_dict_without_model_type_is_starcoder2():
    assert Starcoder2Config.from_dict(tiny_config()).hidden_size == 32


@pytest.mark.parametrize("content", [b'{"vocab_size": 99,', b"not json at all", b"[1, 2, 3]", b"\xff\xfe\x00bad", b""])
def test_from_json_file_invalid_names_file(content, tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        Starcoder2Config.from_json_file(path)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        Starcoder2Config.from_pretrained(tmp_path)


def test_from_pretrained_without_config_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        Starcoder2Config.from_pretrained(tmp_path)


# ---- labels -----------------------------------------------------------------------------------------------------


def test_id2label_string_keys_from_json_become_ints(tmp_path):
    data = {**tiny_config(), "id2label": {"0": "neg", "1": "pos", "2": "mixed"},
            "label2id": {"neg": "0", "pos": "1", "mixed": "2"}}
    (tmp_path / "config.json").write_text(json.dumps(data))
    ours = Starcoder2Config.from_pretrained(tmp_path)
    assert ours.id2label == {0: "neg", 1: "pos", 2: "mixed"}
    assert ours.label2id == {"neg": 0, "pos": 1, "mixed": 2}
    assert ours.num_labels == 3
    ref = transformers.Starcoder2Config.from_pretrained(tmp_path)
    assert ref.id2label == ours.id2label and ref.num_labels == ours.num_labels


@pytest.mark.parametrize("num_labels", [1, 2, 3, 5])
def test_num_labels_builds_default_names(num_labels):
    ours = Starcoder2Config(**tiny_config(num_labels=num_labels))
    expected = {i: f"LABEL_{i}" for i in range(num_labels)}
    assert ours.id2label == expected
    assert ours.label2id == {v: k for k, v in expected.items()}
    assert ours.num_labels == num_labels
    ref = _reference_config(**tiny_config(num_labels=num_labels))
    assert ref.id2label == ours.id2label and ref.label2id == ours.label2id
    assert "num_labels" not in ours.to_dict()  # derived from id2label, as in the reference


@pytest.mark.parametrize("num_labels", [None, 2, 3])
def test_num_labels_against_explicit_id2label_matches_reference(num_labels):
    kwargs = tiny_config(id2label={0: "neg", 1: "pos"})
    if num_labels is not None:
        kwargs["num_labels"] = num_labels
    ours, ref = Starcoder2Config(**kwargs), _reference_config(**kwargs)
    assert ours.id2label == ref.id2label
    assert ours.num_labels == ref.num_labels


# ---- presets (spec §1.7) ------------------------------------------------------------------------------------------

PRESET_VALUES = {
    "3b": dict(hidden_size=3072, intermediate_size=12288, num_hidden_layers=30, num_attention_heads=24,
               num_key_value_heads=2, rope_theta=999999.4420358813, tie_word_embeddings=True,
               initializer_range=0.018042, params=3_030_371_328),
    "7b": dict(hidden_size=4608, intermediate_size=18432, num_hidden_layers=32, num_attention_heads=36,
               num_key_value_heads=4, rope_theta=1000000, tie_word_embeddings=True,
               initializer_range=0.018042, params=7_173_923_840),
    "15b": dict(hidden_size=6144, intermediate_size=24576, num_hidden_layers=40, num_attention_heads=48,
                num_key_value_heads=4, rope_theta=100000, tie_word_embeddings=False,
                initializer_range=0.01275, params=15_957_889_024),
}


@pytest.mark.parametrize("size", list(PRESET_VALUES))
def test_preset_values(size):
    expected = dict(PRESET_VALUES[size])
    expected.pop("params")
    config = preset_config(size)
    for name, value in expected.items():
        actual = getattr(config, name)
        assert actual == value and type(actual) is type(value), name
    assert config.rope_parameters == {"rope_theta": expected["rope_theta"], "rope_type": "default"}
    assert config.vocab_size == 49152
    assert config.sliding_window == 4096
    assert config.max_position_embeddings == 16384
    assert config.head_size == 128
    assert config.bos_token_id == config.eos_token_id == 0 and config.pad_token_id is None
    assert config.hidden_act == "gelu_pytorch_tanh" and config.norm_epsilon == 1e-5 and config.use_bias is True
    assert config.attention_dropout == config.residual_dropout == config.embedding_dropout == 0.1
    assert config.architectures == ["Starcoder2ForCausalLM"]
    # The exact theta survives JSON (3B: 999999.4420358813, not its float32 rounding 999999.4375).
    saved = json.loads(config.to_json_string())
    assert saved["rope_theta"] == saved["rope_parameters"]["rope_theta"] == expected["rope_theta"]


@pytest.mark.parametrize("name", ["3b", "3B", "starcoder2-3b", "bigcode/starcoder2-3b", "BigCode/StarCoder2-3B"])
def test_preset_name_spellings(name):
    assert preset_config(name) == preset_config("starcoder2-3b")


def test_unknown_preset():
    with pytest.raises(KeyError, match="'1b'.*starcoder2-3b"):
        preset_config("1b")
    assert set(PRESETS) == {"starcoder2-3b", "starcoder2-7b", "starcoder2-15b"}


@pytest.mark.parametrize("size", list(PRESET_VALUES))
def test_preset_parameter_count_on_meta(size):
    with torch.device("meta"):
        model = modeling.Starcoder2ForCausalLM(preset_config(size))
    assert model.num_parameters() == PRESET_VALUES[size]["params"]
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == PRESET_VALUES[size]["tie_word_embeddings"]


def _names_and_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def test_3b_state_dict_equals_reference_on_meta():
    config = preset_config("3b")
    with torch.device("meta"):
        ours = modeling.Starcoder2ForCausalLM(config)
        ref = transformers.Starcoder2ForCausalLM(transformers.Starcoder2Config(**config.to_dict()))
    assert _names_and_shapes(ours) == _names_and_shapes(ref)
    assert ours.num_parameters() == ref.num_parameters() == PRESET_VALUES["3b"]["params"]


CLASSES = ["Starcoder2Model", "Starcoder2ForCausalLM", "Starcoder2ForSequenceClassification",
           "Starcoder2ForTokenClassification"]


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("class_name", CLASSES)
def test_state_dict_names_and_shapes_equal_reference(class_name, tied):
    config = tiny_config(num_labels=3, tie_word_embeddings=tied, head_dim=16)
    with torch.device("meta"):
        ours = getattr(modeling, class_name)(Starcoder2Config(**config))
        ref = getattr(transformers, class_name)(transformers.Starcoder2Config(**config))
    assert _names_and_shapes(ours) == _names_and_shapes(ref)
    if class_name == "Starcoder2ForCausalLM":
        assert (ours.lm_head.weight is ours.model.embed_tokens.weight) == tied
        assert (ref.lm_head.weight is ref.model.embed_tokens.weight) == tied
