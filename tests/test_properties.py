"""Property tests (issue 8), with hypothesis on tiny inputs:

(a) for random tiny configs, prompt lengths and prefill chunk sizes, `engine.prefill` into a `KVCache` followed by
    token-by-token decoding gives the logits of the full uncached forward (fp32, <= 1e-5);
(b) with a sliding window smaller than the run, the ring buffer gives the same logits as the uncached forward (which
    applies the window as a mask) and holds exactly the last min(W, seen) positions;
(c) random corruptions of config.json and model.safetensors end in `Sc2Error` from `sc2cli.checkpoint.load` (or load
    fine), never another exception; a handful also go through the CLI under a timeout (no hang, one line).
"""

from __future__ import annotations

import json
import random
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from checkpoints import make_checkpoint
from cli_helpers import assert_one_line_error, isolated_env, sc2_command
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from oracle import sharpen_
from sc2_zygote import Zygote

from sc2cli.model.cache import KVCache
from sc2cli.generation.engine import prefill
from sc2cli.errors import Sc2Error
from sc2cli.checkpoint import load
from sc2cli.model.transformer import Starcoder2Config, Starcoder2ForCausalLM

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VOCAB = 61


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread is fastest and leaves the machine's other cores alone."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- (a) and (b): cached decoding equals the full forward --------------------------------------------------------


@st.composite
def tiny_configs(draw, window=st.one_of(st.none(), st.integers(1, 12))):
    kv_heads = draw(st.sampled_from([1, 2, 4]))
    heads = kv_heads * draw(st.sampled_from([1, 2, 3]))
    head_dim = draw(st.sampled_from([2, 4, 8, 16]))
    explicit_head_dim = draw(st.booleans())  # a `head_dim` key with hidden_size != heads * head_dim
    hidden = draw(st.sampled_from([8, 24, 32])) if explicit_head_dim else heads * head_dim
    return Starcoder2Config(
        vocab_size=VOCAB, hidden_size=hidden, intermediate_size=draw(st.sampled_from([8, 20])),
        num_hidden_layers=draw(st.integers(1, 2)), num_attention_heads=heads, num_key_value_heads=kv_heads,
        head_dim=head_dim if explicit_head_dim else None, max_position_embeddings=64,
        sliding_window=draw(window), use_bias=draw(st.booleans()), tie_word_embeddings=draw(st.booleans()),
        rope_theta=draw(st.sampled_from([10.0, 10000.0])), bos_token_id=0, eos_token_id=0,
    )


def _model(config: Starcoder2Config, seed: int) -> Starcoder2ForCausalLM:
    torch.manual_seed(seed)
    model = Starcoder2ForCausalLM(config)
    model.init_weights()
    return sharpen_(model, seed).eval()


def _check_incremental(config, seed, prompt_len, chunk, decode_steps):
    model = _model(config, seed)
    total = prompt_len + decode_steps
    ids = torch.randint(0, VOCAB, (1, total), generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        full = model(ids).logits[0]  # uncached: causal + window mask over the whole run
        cache = KVCache(config, 1, total)
        got = [prefill(model, ids[:, :prompt_len], torch.ones(1, prompt_len, dtype=torch.long), cache, chunk)[0]]
        held = [cache.positions_held()]
        for t in range(prompt_len, total):
            got.append(model(ids[:, t:t + 1], cache=cache).logits[0, -1])
            held.append(cache.positions_held())
    expected = full[prompt_len - 1:]
    worst = (torch.stack(got) - expected).abs().max().item()
    # fp32: 1e-5 on logits of order 1; relative beyond (one-token and whole-sequence matmuls round differently).
    scale = max(1.0, expected.abs().max().item())
    assert worst <= 1e-5 * scale, f"cached logits differ from the full forward by {worst:.2e} (max |logit| {scale:.1f})"
    window = config.sliding_window
    seen = range(prompt_len, total + 1)
    assert held == [min(window, n) if window else n for n in seen]
    return cache


@FAST
@given(config=tiny_configs(), seed=st.integers(0, 2**16), prompt_len=st.integers(1, 20),
       chunk=st.integers(1, 24), decode_steps=st.integers(1, 10))
def test_incremental_decoding_equals_the_full_forward(config, seed, prompt_len, chunk, decode_steps):
    _check_incremental(config, seed, prompt_len, chunk, decode_steps)


@settings(max_examples=15, deadline=None)
@given(config=tiny_configs(window=st.integers(1, 8)), seed=st.integers(0, 2**16), prompt_len=st.integers(1, 16),
       chunk=st.integers(1, 16), decode_steps=st.integers(1, 16))
def test_ring_buffer_equals_the_windowed_full_forward(config, seed, prompt_len, chunk, decode_steps):
    window = config.sliding_window
    assume(prompt_len + decode_steps > window)  # the ring wraps
    cache = _check_incremental(config, seed, prompt_len, chunk, decode_steps)
    total = prompt_len + decode_steps
    assert cache.keys.shape[3] == window  # memory is bounded by the window, not the run
    assert sorted(cache.slot_columns.tolist()) == list(range(total - window, total))


# ---- (c) corrupt checkpoints always end in an sc2 error ----------------------------------------------------------


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("pristine"), seed=5, hidden_size=16, intermediate_size=16,
                           num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=1, sliding_window=8)


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.sampled_from([0, 1, 2, -1, 8, 16, 1024]),
              st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
              st.sampled_from(["default", "linear", "dynamic", "yarn", "longrope", "llama3", "gelu", "starcoder2"])),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(st.text(max_size=12), children,
                                                                                 max_size=3)),
    max_leaves=6,
)
ROPE_VALUES = st.fixed_dictionaries({}, optional={
    "rope_type": st.sampled_from(["default", "linear", "dynamic", "yarn", "longrope", "llama3", "nope"]),
    "factor": JSON_VALUES, "original_max_position_embeddings": JSON_VALUES, "low_freq_factor": JSON_VALUES,
    "high_freq_factor": JSON_VALUES, "short_factor": JSON_VALUES, "long_factor": JSON_VALUES,
    "beta_fast": JSON_VALUES, "beta_slow": JSON_VALUES, "attention_factor": JSON_VALUES, "rope_theta": JSON_VALUES,
})


@st.composite
def config_corruptions(draw, original: dict):
    kind = draw(st.sampled_from(["mutate", "mutate", "mutate", "truncate", "garbage"]))
    if kind == "garbage":
        return draw(st.binary(max_size=64))
    text = json.dumps(original)
    if kind == "truncate":
        return text[: draw(st.integers(0, len(text) - 1))].encode()
    data = dict(original)
    keys = sorted(data) + ["head_dim", "rope_scaling", "rope_parameters", "num_labels", "id2label", "auto_map",
                           "original_max_position_embeddings", "architectures", "extra"]
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(keys))
        if draw(st.booleans()) and key in data:
            del data[key]
        elif key in ("rope_scaling", "rope_parameters"):
            data[key] = draw(st.one_of(ROPE_VALUES, JSON_VALUES))
        else:
            data[key] = draw(JSON_VALUES)
    return json.dumps(data).encode()  # NaN/Infinity included: Python's json writes and reads them


def _load_or_sc2_error(directory: Path) -> None:
    try:
        loaded = load(str(directory), device="cpu", dtype="float32")
    except Sc2Error as err:
        message = str(err)
        assert message and "\n" not in message, message
        return
    with torch.inference_mode():  # it loaded: it must also run
        loaded.model(torch.tensor([[1, 2, 3]]))


# Values that once escaped `load` as other exceptions (or built a giant table / model): each is now an Sc2Error.
EDGE_CONFIGS = {
    "pad-id-beyond-vocab": {"pad_token_id": 10**9},
    "pad-id-negative": {"pad_token_id": -5000},
    "pad-id-string": {"pad_token_id": "x"},
    "pad-id-float": {"pad_token_id": 1.5},
    "eos-id-string": {"eos_token_id": "x"},
    "rope-type-list": {"rope_scaling": {"rope_type": ["x"]}},
    "yarn-original-string": {"rope_scaling": {"rope_type": "yarn", "factor": 2, "original_max_position_embeddings": "x"}},
    "yarn-beta-string": {"rope_scaling": {"rope_type": "yarn", "factor": 2, "beta_fast": "x"}},
    "yarn-beta-negative": {"rope_scaling": {"rope_type": "yarn", "factor": 2, "beta_fast": -1}},
    "llama3-low-freq-zero": {"rope_scaling": {"rope_type": "llama3", "factor": 2, "low_freq_factor": 0,
                                              "high_freq_factor": 1, "original_max_position_embeddings": 8}},
    "llama3-low-freq-string": {"rope_scaling": {"rope_type": "llama3", "factor": 2, "low_freq_factor": "a",
                                                "high_freq_factor": 1, "original_max_position_embeddings": 8}},
    "longrope-original-one": {"rope_scaling": {"rope_type": "longrope", "factor": 4, "short_factor": [1, 1],
                                               "long_factor": [1, 1], "original_max_position_embeddings": 1}},
    "longrope-factor-strings": {"rope_scaling": {"rope_type": "longrope", "short_factor": [1, 1],
                                                 "long_factor": ["a", "b"]}},
    "rope-factor-nan": {"rope_scaling": {"rope_type": "linear", "factor": float("nan")}},
    "rope-factor-bool": {"rope_scaling": {"rope_type": "linear", "factor": True}},
    "norm-epsilon-nan": {"norm_epsilon": float("nan")},
    "norm-epsilon-infinite": {"norm_epsilon": float("inf")},
    "dropout-bool": {"attention_dropout": True},
    "tie-word-embeddings-string": {"tie_word_embeddings": "no"},
    "use-bias-string": {"use_bias": "no"},
    "num-labels-huge": {"num_labels": 10**12},
    "num-hidden-layers-huge": {"num_hidden_layers": 10**9},
    "hidden-size-huge": {"hidden_size": 10**12},
    "head-dim-huge": {"head_dim": 2**40},
    "architectures-nested": {"architectures": [[1]]},
    "heads-wider-than-hidden": {"num_attention_heads": 24},
}


@pytest.mark.parametrize("edit", [pytest.param(v, id=k) for k, v in EDGE_CONFIGS.items()])
def test_edge_config_values_are_sc2_errors(pristine, edit, tmp_path):
    directory = Path(shutil.copytree(pristine, tmp_path / "ckpt"))
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **edit}))
    with pytest.raises(Sc2Error) as info:
        load(str(directory), device="cpu", dtype="float32")
    assert "\n" not in str(info.value)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corrupt_config_json_is_an_sc2_error(pristine, data):
    original = json.loads((pristine / "config.json").read_text())
    corrupt = data.draw(config_corruptions(original))
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(shutil.copytree(pristine, Path(tmp) / "ckpt"))
        (directory / "config.json").write_bytes(corrupt)
        _load_or_sc2_error(directory)


@st.composite
def safetensors_corruptions(draw, original: bytes):
    header_len = struct.unpack("<Q", original[:8])[0]
    kind = draw(st.sampled_from(["truncate", "flip-header", "flip-any", "length", "garbage", "splice"]))
    data = bytearray(original)
    if kind == "truncate":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    if kind in ("flip-header", "flip-any"):
        end = 8 + header_len if kind == "flip-header" else len(data)
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, end - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    if kind == "length":
        value = draw(st.one_of(st.integers(0, 2**64 - 1), st.integers(max(0, header_len - 16), header_len + 16)))
        return struct.pack("<Q", value) + bytes(data[8:])
    if kind == "splice":  # the header text edited in place: digits changed, so offsets and shapes lie
        header = data[8:8 + header_len].decode()
        digits = [i for i, c in enumerate(header) if c.isdigit()]
        chars = list(header)
        for _ in range(draw(st.integers(1, 3))):
            chars[draw(st.sampled_from(digits))] = str(draw(st.integers(0, 9)))
        return bytes(data[:8]) + "".join(chars).encode() + bytes(data[8 + header_len:])
    return draw(st.binary(max_size=128))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corrupt_safetensors_is_an_sc2_error(pristine, data):
    original = (pristine / "model.safetensors").read_bytes()
    corrupt = data.draw(safetensors_corruptions(original))
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(shutil.copytree(pristine, Path(tmp) / "ckpt"))
        (directory / "model.safetensors").write_bytes(corrupt)
        _load_or_sc2_error(directory)


def test_corruptions_through_the_cli_never_hang(pristine, tmp_path):
    """A handful of corruptions through the installed `sc2` (forked from a torch-loaded server), each under a
    60 s timeout: exit 1, one line, no traceback."""
    rng = random.Random(8)
    weights = (pristine / "model.safetensors").read_bytes()
    header_len = struct.unpack("<Q", weights[:8])[0]
    cases = {
        "config.json": [b"[" * 100_000, b'{"model_type": "starcoder2", "num_attention_heads": 1e400}',
                        json.dumps({**json.loads((pristine / "config.json").read_text()),
                                    "max_position_embeddings": 2**62}).encode()],
        "model.safetensors": [struct.pack("<Q", 2**63) + weights[8:], weights[:8 + header_len] + b"\x00" * 10,
                              bytes(rng.randrange(256) for _ in range(4096))],
    }
    zygote = Zygote(sc2_command()[0])
    try:
        for name, contents in cases.items():
            for i, content in enumerate(contents):
                directory = Path(shutil.copytree(pristine, tmp_path / f"{name}-{i}"))
                (directory / name).write_bytes(content)
                result = zygote.run(["complete", "-m", str(directory), "--max-new-tokens", "2", "x"],
                                    isolated_env(tmp_path / "home"), tmp_path / "io", timeout=60)
                if (name, i) == ("config.json", 2):  # a huge context is allowed: it still runs
                    assert result.returncode == 0, result.stderr.decode()
                else:
                    assert_one_line_error(result, 1, "sc2: error:")
    finally:
        zygote.close()
