"""`sc2 export gguf`: what llama.cpp reads from the file (hyper-parameters, tensors under its names, the
tokenizer, the FIM ids), read back with the gguf package's own reader; every stored type decodes to the weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf", reason="sc2 export gguf needs the gguf package (the gguf extra)")

from safetensors.torch import load_file  # noqa: E402

from checkpoints import make_checkpoint  # noqa: E402
from cli_helpers import assert_one_line_error, run_sc2  # noqa: E402
from sc2cli.export.gguf import export, gguf_name  # noqa: E402
from sc2cli.hub import resolve  # noqa: E402


@pytest.fixture(scope="module")
def shipped():
    return resolve("sc2-tiny")


@pytest.fixture(scope="module")
def exported(shipped, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf")
    return {kind: _export(shipped, folder / f"tiny-{kind}.gguf", kind) for kind in ("f32", "f16", "bf16", "q8_0")}


def _export(checkpoint, path, kind):
    export(checkpoint, path, kind)
    return gguf.GGUFReader(str(path))


def _field(reader, key):
    return reader.fields[key].contents()


def _weights(checkpoint) -> dict[str, np.ndarray]:
    return {gguf_name(k): v.float().numpy() for k, v in load_file(str(checkpoint / "model.safetensors")).items()
            if gguf_name(k)}


def test_the_hyperparameters_are_the_configs(exported, shipped):
    config = json.loads((shipped / "config.json").read_text())
    reader = exported["f32"]
    assert _field(reader, "general.architecture") == "starcoder2"
    expected = {"context_length": config["max_position_embeddings"], "embedding_length": config["hidden_size"],
                "feed_forward_length": config["intermediate_size"], "block_count": config["num_hidden_layers"],
                "attention.head_count": config["num_attention_heads"],
                "attention.head_count_kv": config["num_key_value_heads"],
                "attention.layer_norm_epsilon": pytest.approx(config["norm_epsilon"]),
                "rope.freq_base": config["rope_parameters"]["rope_theta"]}
    assert {key: _field(reader, f"starcoder2.{key}") for key in expected} == expected


def test_f32_tensors_are_the_weights_under_llama_cpps_names(exported, shipped):
    weights = _weights(shipped)
    tensors = {t.name: t for t in exported["f32"].tensors}
    assert "output.weight" not in tensors  # tied: llama.cpp reads the embedding as the head
    assert set(tensors) == set(weights) - {"output.weight"}
    assert {"token_embd.weight", "output_norm.weight", "blk.0.attn_q.weight", "blk.7.ffn_down.bias"} <= set(tensors)
    for name, tensor in tensors.items():
        assert tensor.tensor_type == gguf.GGMLQuantizationType.F32
        assert np.array_equal(np.asarray(tensor.data).reshape(weights[name].shape), weights[name]), name


@pytest.mark.parametrize("kind, tolerance", [("f16", 1e-3), ("bf16", 0.0), ("q8_0", None)])
def test_every_stored_type_decodes_to_the_weights(exported, shipped, kind, tolerance):
    weights = _weights(shipped)
    for tensor in exported[kind].tensors:
        original = weights[tensor.name]
        decoded = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type).reshape(original.shape)
        if original.ndim == 1:  # norms and biases stay float32
            assert tensor.tensor_type == gguf.GGMLQuantizationType.F32 and np.array_equal(decoded, original)
        elif kind == "bf16":  # exactly torch's rounding to bfloat16
            rounded = torch.from_numpy(original).to(torch.bfloat16).float().numpy()
            assert np.array_equal(decoded, rounded), tensor.name
        elif kind == "q8_0":  # 8 bits per value, one float16 scale per 32: half a step, plus the scale's rounding
            blocks = original.reshape(-1, 32)
            step = np.abs(blocks).max(axis=1, keepdims=True) / 127
            bound = step * 0.5 + np.abs(blocks) * 2**-10 + 1e-7
            assert np.all(np.abs(decoded.reshape(-1, 32) - blocks) <= bound), tensor.name
        else:
            assert np.allclose(decoded, original, rtol=tolerance, atol=1e-6), tensor.name


def test_the_tokenizer_is_the_checkpoints(exported, shipped):
    reader = exported["q8_0"]
    spec = json.loads((shipped / "tokenizer.json").read_text())
    tokens = _field(reader, "tokenizer.ggml.tokens")
    vocab = {**spec["model"]["vocab"], **{t["content"]: t["id"] for t in spec["added_tokens"]}}
    assert len(tokens) == len(vocab) and all(tokens[i] == text for text, i in vocab.items())
    assert _field(reader, "tokenizer.ggml.model") == "gpt2" and _field(reader, "tokenizer.ggml.pre") == "starcoder"
    assert len(_field(reader, "tokenizer.ggml.merges")) == len(spec["model"]["merges"])
    types = _field(reader, "tokenizer.ggml.token_type")
    assert types[vocab["<fim_middle>"]] == gguf.TokenType.CONTROL and types[vocab["def"]] == gguf.TokenType.NORMAL
    ids = {key: _field(reader, f"tokenizer.ggml.{key}_token_id") for key in ("fim_pre", "fim_suf", "fim_mid",
                                                                               "fim_rep", "fim_sep", "eos")}
    assert ids == {"fim_pre": vocab["<fim_prefix>"], "fim_suf": vocab["<fim_suffix>"],
                   "fim_mid": vocab["<fim_middle>"], "fim_rep": vocab["<repo_name>"],
                   "fim_sep": vocab["<file_sep>"], "eos": vocab["<|endoftext|>"]}
    assert _field(reader, "tokenizer.ggml.add_bos_token") is False


def test_an_untied_head_is_written_as_output(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "untied", tie_word_embeddings=False)
    reader = _export(checkpoint, tmp_path / "untied.gguf", "f32")
    names = {t.name for t in reader.tensors}
    assert "output.weight" in names and "token_embd.weight" in names


@pytest.mark.slow
def test_the_command_writes_the_file_and_refuses_bad_input_in_one_line(tmp_path):
    out = tmp_path / "tiny.gguf"
    result = run_sc2(["export", "gguf", "sc2-tiny", str(out), "--type", "q8_0"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"" and gguf.GGUFReader(str(out)).tensors
    assert_one_line_error(run_sc2(["export", "gguf", "sc2-tiny", str(out), "--type", "q4"], tmp_path), 2, "--type")
    assert_one_line_error(run_sc2(["export", "gguf", "sc2-tiny", str(tmp_path / "no" / "x.gguf")], tmp_path), 2,
                          "OUT", "does not exist")
    assert_one_line_error(run_sc2(["export", "gguf", str(tmp_path / "missing"), str(out)], tmp_path), 2, "missing")
    assert not list(tmp_path.glob(".*.sc2tmp"))  # nothing half-written is left behind
