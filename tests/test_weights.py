"""Checkpoints: sharded and single-file safetensors both ways with transformers, tied heads, dtypes, and every way a
checkpoint can be broken (each must be a CheckpointError naming the tensor and/or the file)."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest
import safetensors.torch
import torch
from oracle import load_reference, reference_model, tiny_config
from safetensors import safe_open

from sc2cli import model as modeling
from sc2cli.errors import CheckpointError

FP32_TOL = 1e-5
SHARD_RE = re.compile(r"model-(\d{5})-of-(\d{5})\.safetensors")


def _ids(batch: int = 2, length: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randint(1, 99, (batch, length), generator=torch.Generator().manual_seed(seed))


def _ref_checkpoint(directory: Path, class_name: str = "Starcoder2ForCausalLM", seed: int = 0, **overrides):
    ref = reference_model(class_name, seed=seed, **tiny_config(**overrides))
    ref.save_pretrained(directory)
    return ref


def _keys(path: Path) -> set[str]:
    with safe_open(path, framework="pt") as handle:
        return set(handle.keys())


def _rewrite(path: Path, change) -> None:
    """Read every tensor of a safetensors file, let `change` edit the dict, write it back."""
    tensors = safetensors.torch.load_file(path)
    change(tensors)
    safetensors.torch.save_file(tensors, path, metadata={"format": "pt"})


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def _assert_same_parameters(a: torch.nn.Module, b: torch.nn.Module) -> None:
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert pa.keys() == pb.keys()
    for name in pa:
        assert pa[name].dtype == pb[name].dtype and torch.equal(pa[name], pb[name]), name


def _shards(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.safetensors"))


# ---- sharding ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_shard_size", [20_000, "20KB", 4096])
def test_sharded_save_layout_and_both_loaders(max_shard_size, tmp_path):
    ref = _ref_checkpoint(tmp_path / "src", tie_word_embeddings=False)
    ours = modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path / "src")
    ours.save_pretrained(tmp_path / "sharded", max_shard_size=max_shard_size)
    out = tmp_path / "sharded"

    shards = _shards(out)
    assert not (out / "model.safetensors").exists()
    assert len(shards) >= 3
    for i, name in enumerate(shards, start=1):
        match = SHARD_RE.fullmatch(name)
        assert match, name
        assert (int(match.group(1)), int(match.group(2))) == (i, len(shards))
    index = json.loads((out / "model.safetensors.index.json").read_text())
    weight_map = index["weight_map"]
    assert set(weight_map.values()) == set(shards)
    tensors = {}
    for shard in shards:
        keys = _keys(out / shard)
        assert keys == {k for k, v in weight_map.items() if v == shard}
        tensors.update(safetensors.torch.load_file(out / shard))
    assert set(weight_map) == set(tensors) == set(dict(ours.named_parameters()))
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    limit = 20_000 if max_shard_size == "20KB" else max_shard_size
    for shard in shards:  # a shard only exceeds the limit when it holds a single oversized tensor
        sizes = [t.numel() * t.element_size() for k, t in tensors.items() if weight_map[k] == shard]
        assert sum(sizes) <= limit or len(sizes) == 1

    ids = _ids()
    back = load_reference("Starcoder2ForCausalLM", out)
    assert torch.equal(_logits(back, ids), _logits(ref, ids))
    _assert_same_parameters(back, ref)
    again = modeling.Starcoder2ForCausalLM.from_pretrained(out)
    _assert_same_parameters(again, ours)
    assert torch.equal(_logits(again, ids), _logits(ours, ids))
    assert (_logits(again, ids) - _logits(back, ids)).abs().max() <= FP32_TOL


def test_resave_unsharded_removes_stale_shards(tmp_path):
    _ref_checkpoint(tmp_path / "src")
    ours = modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path / "src")
    ours.save_pretrained(tmp_path / "out", max_shard_size=10_000)
    assert len(_shards(tmp_path / "out")) > 1
    ours.save_pretrained(tmp_path / "out")
    assert _shards(tmp_path / "out") == ["model.safetensors"]
    assert not (tmp_path / "out" / "model.safetensors.index.json").exists()
    _assert_same_parameters(modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path / "out"), ours)


@pytest.mark.parametrize("tied", [True, False])
def test_transformers_sharded_checkpoint_loads(tied, tmp_path):
    ref = reference_model("Starcoder2ForCausalLM", seed=4, **tiny_config(tie_word_embeddings=tied))
    ref.save_pretrained(tmp_path / "single")
    ref.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert len(list((tmp_path / "sharded").glob("model-*-of-*.safetensors"))) > 1
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    single = modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path / "single")
    sharded = modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path / "sharded")
    _assert_same_parameters(sharded, single)
    ids = _ids()
    assert torch.equal(_logits(sharded, ids), _logits(single, ids))
    assert (_logits(sharded, ids) - _logits(ref, ids)).abs().max() <= FP32_TOL


# ---- tied embeddings --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tied", [True, False])
def test_saved_lm_head_only_when_untied(tied, tmp_path):
    ref = _ref_checkpoint(tmp_path / "ref", tie_word_embeddings=tied)
    ours = modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path / "ref")
    assert (ours.lm_head.weight is ours.model.embed_tokens.weight) == tied
    ours.save_pretrained(tmp_path / "ours")
    keys = _keys(tmp_path / "ours" / "model.safetensors")
    assert ("lm_head.weight" in keys) == (not tied)
    assert keys == _keys(tmp_path / "ref" / "model.safetensors")  # same key set as transformers writes
    assert torch.equal(ours.lm_head.weight, ref.lm_head.weight)
    back = modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path / "ours")
    assert (back.lm_head.weight is back.model.embed_tokens.weight) == tied


def test_tied_checkpoint_with_redundant_lm_head_loads(tmp_path):
    ref = _ref_checkpoint(tmp_path)
    path = tmp_path / "model.safetensors"
    _rewrite(path, lambda t: t.__setitem__("lm_head.weight", t["model.embed_tokens.weight"].clone()))
    assert "lm_head.weight" in _keys(path)
    ours = modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path)
    assert ours.config.tie_word_embeddings is True
    assert ours.lm_head.weight is ours.model.embed_tokens.weight
    assert torch.equal(ours.lm_head.weight, ref.model.embed_tokens.weight)
    assert ours.num_parameters() == ref.num_parameters()
    back = load_reference("Starcoder2ForCausalLM", tmp_path)
    ids = _ids()
    assert (_logits(ours, ids) - _logits(back, ids)).abs().max() <= FP32_TOL
    ours.save_pretrained(tmp_path / "resaved")
    assert "lm_head.weight" not in _keys(tmp_path / "resaved" / "model.safetensors")


def test_tied_config_with_different_lm_head_loads_untied_like_reference(tmp_path):
    """The config lies: transformers keeps both tensors (with a warning) rather than dropping the stored head."""
    _ref_checkpoint(tmp_path)
    head = torch.randn(99, 32, generator=torch.Generator().manual_seed(11))
    _rewrite(tmp_path / "model.safetensors", lambda t: t.__setitem__("lm_head.weight", head))
    with pytest.warns(UserWarning, match="lm_head.weight differs"):
        ours = modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path)
    assert ours.lm_head.weight is not ours.model.embed_tokens.weight
    assert torch.equal(ours.lm_head.weight, head)
    assert ours.config.tie_word_embeddings is False
    back = load_reference("Starcoder2ForCausalLM", tmp_path)
    assert torch.equal(back.lm_head.weight, head)
    ids = _ids()
    assert (_logits(ours, ids) - _logits(back, ids)).abs().max() <= FP32_TOL
    ours.save_pretrained(tmp_path / "resaved")  # written untied, so it reloads the same
    assert "lm_head.weight" in _keys(tmp_path / "resaved" / "model.safetensors")
    _assert_same_parameters(modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path / "resaved"), ours)


# ---- dtype ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("tied", [True, False])
def test_dtype_cast_on_load(dtype, tied, tmp_path):
    _ref_checkpoint(tmp_path, tie_word_embeddings=tied)
    stored = safetensors.torch.load_file(tmp_path / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in stored.values())
    model = modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path, dtype=dtype)
    params = dict(model.named_parameters(remove_duplicate=False))
    assert {p.dtype for p in params.values()} == {dtype}
    assert model.dtype == dtype
    for name, tensor in stored.items():
        assert torch.equal(params[name], tensor.to(dtype)), name
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    assert _logits(model, _ids()).dtype == dtype


def test_bfloat16_checkpoint_upcast_to_float32(tmp_path):
    ref = reference_model("Starcoder2ForCausalLM", dtype=torch.bfloat16, **tiny_config())
    ref.save_pretrained(tmp_path)
    stored = safetensors.torch.load_file(tmp_path / "model.safetensors")
    assert {t.dtype for t in stored.values()} == {torch.bfloat16}
    model = modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path)
    assert model.dtype == torch.float32
    params = dict(model.named_parameters())
    for name, tensor in stored.items():
        assert torch.equal(params[name], tensor.float()), name
    as_bf16 = modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    model.save_pretrained(tmp_path / "fp32")
    as_bf16.save_pretrained(tmp_path / "bf16")
    assert json.loads((tmp_path / "fp32" / "config.json").read_text())["dtype"] == "float32"
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(tmp_path / "bf16" / "model.safetensors", framework="pt") as handle:
        assert handle.get_tensor("model.norm.weight").dtype == torch.bfloat16


# ---- broken checkpoints -----------------------------------------------------------------------------------------


def _path_pattern(path: Path) -> str:
    return re.escape(str(path))


def test_missing_tensor(tmp_path):
    _ref_checkpoint(tmp_path)
    _rewrite(tmp_path / "model.safetensors", lambda t: t.pop("model.layers.1.mlp.c_fc.bias"))
    with pytest.raises(CheckpointError, match=r"lacks tensor model\.layers\.1\.mlp\.c_fc\.bias") as info:
        modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_several_missing_tensors_counted(tmp_path):
    _ref_checkpoint(tmp_path)

    def drop(tensors):
        for key in [k for k in tensors if k.startswith("model.layers.1.")]:
            del tensors[key]

    _rewrite(tmp_path / "model.safetensors", drop)
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\..* \(and 15 more\)"):
        modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path)


@pytest.mark.parametrize("extra", ["model.layers.0.self_attn.extra.weight", "model.layers.2.input_layernorm.weight",
                                   "score.weight"])
def test_unexpected_tensor(extra, tmp_path):
    _ref_checkpoint(tmp_path)
    _rewrite(tmp_path / "model.safetensors", lambda t: t.__setitem__(extra, torch.zeros(32)))
    with pytest.raises(CheckpointError, match=f"unexpected tensor {re.escape(extra)}") as info:
        modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_untied_checkpoint_without_lm_head(tmp_path):
    """An untied checkpoint needs lm_head.weight: dropping it is a missing tensor, not silently tied."""
    _ref_checkpoint(tmp_path, tie_word_embeddings=False)
    _rewrite(tmp_path / "model.safetensors", lambda t: t.pop("lm_head.weight"))
    with pytest.raises(CheckpointError, match=r"lm_head\.weight"):
        modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path)


@pytest.mark.parametrize("key,shape", [("model.norm.weight", (33,)), ("model.layers.0.self_attn.k_proj.weight", (32, 32)),
                                       ("model.embed_tokens.weight", (100, 32))])
def test_wrong_shape(key, shape, tmp_path):
    _ref_checkpoint(tmp_path)
    _rewrite(tmp_path / "model.safetensors", lambda t: t.__setitem__(key, torch.zeros(shape)))
    with pytest.raises(CheckpointError, match=re.escape(key)) as info:
        modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path)
    message = str(info.value)
    assert str(list(shape)) in message and str(tmp_path / "model.safetensors") in message


def test_directory_does_not_exist(tmp_path):
    missing = tmp_path / "no" / "such" / "checkpoint"
    with pytest.raises(CheckpointError, match=f"{_path_pattern(missing)} does not exist"):
        modeling.Starcoder2ForCausalLM.from_pretrained(missing)


def test_path_is_a_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=f"{_path_pattern(path)} is not a directory"):
        modeling.Starcoder2ForCausalLM.from_pretrained(path)


def test_directory_without_config(tmp_path):
    _ref_checkpoint(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointError, match=f"{_path_pattern(tmp_path)} has no config.json"):
        modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path)


@pytest.mark.parametrize("content,pattern", [
    ('{"model_type": "starcoder2", "hidden_size": ', "not valid JSON"),
    ('{"model_type": "llama"}', "model_type"),
    ('{"model_type": "starcoder2", "hidden_size": 0}', "hidden_size"),
])
def test_bad_config_json_is_checkpoint_error(content, pattern, tmp_path):
    _ref_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(CheckpointError, match=pattern) as info:
        modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path)
    assert str(tmp_path / "config.json") in str(info.value)


def test_directory_without_weights(tmp_path):
    _ref_checkpoint(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=f"no model.safetensors .* in {_path_pattern(tmp_path)}"):
        modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path)


@pytest.mark.parametrize("name", ["pytorch_model.bin", "pytorch_model.bin.index.json", "model.bin", "weights.bin"])
def test_pickle_only_checkpoint_refused_without_opening(name, tmp_path, monkeypatch):
    _ref_checkpoint(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    # Not a zip, not a pickle: torch.load on this would raise (and a real payload could run code).
    (tmp_path / name).write_bytes(b"\x80\x04crash\nme\n\x00\xff" * 8)

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle file was opened")

    monkeypatch.setattr(torch, "load", forbidden)
    with pytest.raises(CheckpointError, match="pickle") as info:
        modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path)
    assert "safetensors" in str(info.value) and str(tmp_path) in str(info.value)


def test_truncated_safetensors(tmp_path):
    _ref_checkpoint(tmp_path)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"cannot read {_path_pattern(path)}"):
        modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path)


@pytest.mark.parametrize("content", [b"", b"\x01\x02\x03", b"\x00" * 8])
def test_tiny_or_empty_safetensors(content, tmp_path):
    _ref_checkpoint(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=_path_pattern(path)):
        modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path)


def test_absurd_header_length(tmp_path):
    _ref_checkpoint(tmp_path)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(struct.pack("<Q", 2**40) + data[8:])
    with pytest.raises(CheckpointError, match=_path_pattern(path)):
        modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path)


def test_header_claims_absurd_tensor_extent(tmp_path):
    _ref_checkpoint(tmp_path)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    length = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + length])
    key = "model.embed_tokens.weight"
    header[key]["shape"] = [2**20, 2**20]
    header[key]["data_offsets"] = [header[key]["data_offsets"][0], 2**42]
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length :])
    with pytest.raises(CheckpointError, match=_path_pattern(path)):
        modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path)


def test_header_not_json(tmp_path):
    _ref_checkpoint(tmp_path)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    length = struct.unpack("<Q", data[:8])[0]
    path.write_bytes(data[:8] + b"{" * length + data[8 + length :])
    with pytest.raises(CheckpointError, match=_path_pattern(path)):
        modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path)


def _sharded_checkpoint(directory: Path) -> dict:
    ref = reference_model("Starcoder2ForCausalLM", **tiny_config())
    ref.save_pretrained(directory, max_shard_size="20KB")
    return json.loads((directory / "model.safetensors.index.json").read_text())


def test_index_names_missing_shard(tmp_path):
    index = _sharded_checkpoint(tmp_path)
    victim = sorted(set(index["weight_map"].values()))[1]
    (tmp_path / victim).unlink()
    with pytest.raises(CheckpointError, match=f"shard {re.escape(victim)} named in .*missing") as info:
        modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path)
    assert str(tmp_path / "model.safetensors.index.json") in str(info.value)


@pytest.mark.parametrize("content", ['{"weight_map": {', "[]", '{"metadata": {}}', '{"weight_map": ["a"]}',
                                     '{"weight_map": {"model.norm.weight": 3}}', '"weight_map"'])
def test_invalid_index(content, tmp_path):
    _sharded_checkpoint(tmp_path)
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(content)
    with pytest.raises(CheckpointError, match=f"{_path_pattern(index)} is not a valid safetensors index"):
        modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path)


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "sub/model.safetensors"])
def test_index_naming_shard_outside_checkpoint(shard, tmp_path):
    index = _sharded_checkpoint(tmp_path)
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = shard
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="outside the checkpoint"):
        modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path)


def test_truncated_shard(tmp_path):
    index = _sharded_checkpoint(tmp_path)
    shard = tmp_path / sorted(set(index["weight_map"].values()))[-1]
    shard.write_bytes(shard.read_bytes()[:-16])
    with pytest.raises(CheckpointError, match=_path_pattern(shard)):
        modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path)


# ---- safety and memory ------------------------------------------------------------------------------------------


def test_auto_map_code_never_imported(tmp_path, monkeypatch):
    _ref_checkpoint(tmp_path)
    marker = tmp_path / "PWNED"
    config = json.loads((tmp_path / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "evil.Model", "AutoModelForCausalLM": "evil.Model", "AutoConfig": "evil.Config"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\nModel = Config = object\n")
    (tmp_path / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('package imported')\n")
    monkeypatch.chdir(tmp_path)  # even with the checkpoint as the working directory
    model = modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path)
    assert not marker.exists()
    assert not hasattr(model.config, "auto_map")
    model.save_pretrained(tmp_path / "resaved")
    assert "auto_map" not in json.loads((tmp_path / "resaved" / "config.json").read_text())


def test_loading_is_lazy_and_holds_no_second_copy(tmp_path, monkeypatch):
    _ref_checkpoint(tmp_path, tie_word_embeddings=False)
    expected = safetensors.torch.load_file(tmp_path / "model.safetensors")

    def forbidden(*args, **kwargs):
        raise AssertionError("whole-file load used")

    monkeypatch.setattr(safetensors.torch, "load_file", forbidden)
    monkeypatch.setattr(safetensors.torch, "load", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    model = modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path)
    storages = set()
    for name, param in model.named_parameters():
        assert torch.equal(param, expected[name]), name
        # Each parameter owns exactly its own bytes: nothing keeps a whole-file buffer alive.
        assert param.untyped_storage().nbytes() == param.numel() * param.element_size(), name
        storages.add(param.untyped_storage().data_ptr())
    assert len(storages) == len(expected)
    assert not any(p.is_meta for p in model.parameters()) and not any(b.is_meta for b in model.buffers())


# ---- base model and head prefixes -------------------------------------------------------------------------------


def test_base_model_loads_from_untied_causal_lm_checkpoint(tmp_path):
    ref = _ref_checkpoint(tmp_path, tie_word_embeddings=False)
    assert "lm_head.weight" in _keys(tmp_path / "model.safetensors")
    base = modeling.Starcoder2Model.from_pretrained(tmp_path)
    _assert_same_parameters(base, ref.model)
    ids = _ids()
    with torch.no_grad():
        diff = (base(ids).last_hidden_state - ref.model(ids, use_cache=False).last_hidden_state).abs().max()
    assert diff <= FP32_TOL


@pytest.mark.parametrize("class_name", ["Starcoder2ForSequenceClassification", "Starcoder2ForTokenClassification"])
def test_base_model_loads_from_head_checkpoint(class_name, tmp_path):
    ref = _ref_checkpoint(tmp_path, class_name, num_labels=3)
    base = modeling.Starcoder2Model.from_pretrained(tmp_path)
    _assert_same_parameters(base, ref.model)


def test_sequence_classification_from_base_checkpoint_needs_score(tmp_path):
    ref = _ref_checkpoint(tmp_path, "Starcoder2Model", num_labels=3)
    keys = _keys(tmp_path / "model.safetensors")
    assert "embed_tokens.weight" in keys and not any(k.startswith("model.") for k in keys)
    with pytest.raises(CheckpointError, match=r"lacks tensor score\.weight"):
        modeling.Starcoder2ForSequenceClassification.from_pretrained(tmp_path)

    score = torch.randn(3, 32, generator=torch.Generator().manual_seed(7))
    _rewrite(tmp_path / "model.safetensors", lambda t: t.__setitem__("score.weight", score))
    head = modeling.Starcoder2ForSequenceClassification.from_pretrained(tmp_path)
    _assert_same_parameters(head.model, ref)
    assert torch.equal(head.score.weight, score)
    ids = _ids(1, 9)
    with torch.no_grad():
        expected = ref(ids, use_cache=False).last_hidden_state[:, -1] @ score.T
        assert (head(ids).logits - expected).abs().max() <= FP32_TOL


def test_token_classification_from_base_checkpoint_needs_score_bias(tmp_path):
    _ref_checkpoint(tmp_path, "Starcoder2Model", num_labels=3)
    _rewrite(tmp_path / "model.safetensors", lambda t: t.__setitem__("score.weight", torch.zeros(3, 32)))
    with pytest.raises(CheckpointError, match=r"lacks tensor score\.bias"):
        modeling.Starcoder2ForTokenClassification.from_pretrained(tmp_path)


@pytest.mark.parametrize("tied", [True, False])
def test_causal_lm_from_base_checkpoint(tied, tmp_path):
    ref = _ref_checkpoint(tmp_path, "Starcoder2Model", tie_word_embeddings=tied)
    if not tied:
        with pytest.raises(CheckpointError, match=r"lacks tensor lm_head\.weight"):
            modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path)
        return
    lm = modeling.Starcoder2ForCausalLM.from_pretrained(tmp_path)
    _assert_same_parameters(lm.model, ref)
    assert lm.lm_head.weight is lm.model.embed_tokens.weight


@pytest.mark.parametrize("class_name", ["Starcoder2Model", "Starcoder2ForCausalLM",
                                        "Starcoder2ForSequenceClassification", "Starcoder2ForTokenClassification"])
def test_every_class_round_trips_through_transformers(class_name, tmp_path):
    ref = _ref_checkpoint(tmp_path / "ref", class_name, num_labels=3, tie_word_embeddings=False)
    ours = getattr(modeling, class_name).from_pretrained(tmp_path / "ref")
    ours.save_pretrained(tmp_path / "ours")
    assert _keys(tmp_path / "ours" / "model.safetensors") == _keys(tmp_path / "ref" / "model.safetensors")
    back = load_reference(class_name, tmp_path / "ours")
    _assert_same_parameters(back, ref)
    saved = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert saved["architectures"] == [class_name]
