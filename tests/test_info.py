"""`sc2 info` and the core it calls: the config found without a download (inspection), sizes from a config built
on the meta device (model.sizes), this machine (machine), and the command's rendering; with the defects a new user
found (a folder named twice, `231,472 (0.00 B)`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from checkpoints import make_checkpoint
from cli_helpers import isolate_in_process
from typer.testing import CliRunner

from sc2cli import devices, hub, inspection, kernels, machine
from sc2cli.cli import app
from sc2cli.cli.info import count, render
from sc2cli.model.presets import preset_config
from sc2cli.model.sizes import build_on_meta, kv_bytes_per_token, kv_window, sizes


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("info-ckpt"), seed=4)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    return isolate_in_process(tmp_path, monkeypatch)


def invoke(args):
    return CliRunner().invoke(app, args, catch_exceptions=False)


def rows(text: str) -> dict[str, str]:
    """The human report as {label: value} (labels and values are separated by two or more spaces)."""
    out = {}
    for line in text.splitlines():
        label, _, value = line.partition("  ")
        out[label.strip()] = value.strip()
    return out


# ---- the two defects --------------------------------------------------------------------------------------------
def test_a_folder_is_named_once(isolated, checkpoint):
    """`sc2 info PATH` showed the reference and then the resolved path: for a folder, the same path twice."""
    result = invoke(["info", str(checkpoint)])
    assert result.exit_code == 0
    assert rows(result.stdout)["model"] == str(checkpoint)
    assert result.stdout.count(str(checkpoint)) == 1


def test_other_sources_still_say_where_the_config_came_from(isolated):
    shipped = rows(invoke(["info", "sc2-tiny"]).stdout)["model"]
    assert shipped == f"sc2-tiny  {hub.shipped_model_dir()}"
    preset = rows(invoke(["info", "bigcode/starcoder2-3b"]).stdout)["model"]
    assert preset == "bigcode/starcoder2-3b  (config from built-in preset; not downloaded)"


@pytest.mark.parametrize("n, text", [
    (0, "0"), (950, "950"), (1_000, "1.0 K"), (231_472, "231.5 K"), (999_960, "1.0 M"), (15_765_248, "15.8 M"),
    (999_999_999, "1.00 B"), (3_030_371_328, "3.03 B"), (15_957_889_024, "15.96 B"),
])
def test_parameter_counts_in_a_unit_that_suits_them(n, text):
    assert count(n) == text


def test_a_small_model_is_not_zero_billion(isolated, checkpoint):
    """`parameters 231,472 (0.00 B)` for a small model: now in K or M."""
    report = json.loads(invoke(["info", str(checkpoint), "--json"]).stdout)
    shown = rows(invoke(["info", str(checkpoint)]).stdout)["parameters"]
    assert shown == f"{report['parameters']:,} ({count(report['parameters'])})"
    assert report["parameters"] < 1_000_000 and shown.endswith(" K)") and "0.00 B" not in shown
    tiny = rows(invoke(["info", "sc2-tiny"]).stdout)["parameters"]
    assert tiny.endswith(" M)"), tiny


# ---- the core ---------------------------------------------------------------------------------------------------
def test_sizes_from_a_config():
    config = preset_config("starcoder2-3b")
    report = sizes(config)
    assert report["parameters"] == 3_030_371_328
    model = build_on_meta(config)
    assert next(model.parameters()).device.type == "meta"
    window = kv_window(config)
    assert window == 4096 and report["kv_cache"]["window_tokens"] == window
    per_token = kv_bytes_per_token(config)
    assert per_token["bfloat16"] == 2 * 30 * 2 * 128 * 2 and per_token["float32"] == 2 * per_token["bfloat16"]
    memory = report["memory"]
    assert memory["float32"]["weights_bytes"] == 4 * report["parameters"]
    # int8: one byte per Linear weight and a bf16 scale per output row; the (tied) embedding stays bf16
    embedding = 49152 * 3072
    assert 1.0 < memory["int8"]["weights_bytes"] / (report["parameters"] + embedding) < 1.01
    # int8 weights keep a bfloat16 cache
    assert memory["int8"]["with_kv_cache_bytes"] - memory["int8"]["weights_bytes"] == per_token["bfloat16"] * window


def test_sizes_without_a_sliding_window_count_the_whole_context():
    config = preset_config("starcoder2-3b")
    config.sliding_window = None
    assert kv_window(config) == config.max_position_embeddings


def test_find_config_without_downloading(isolated, checkpoint):
    config, source = inspection.find_config(str(checkpoint))
    assert source == {"source": "local", "path": str(checkpoint), "revision": None, "note": None}
    assert config.hidden_size == 64
    config, source = inspection.find_config("bigcode/starcoder2-15b")
    assert source["source"] == "preset" and config.num_hidden_layers == 40
    with pytest.raises(hub.ModelNotCached) as missing:  # a preset at a given revision is not the preset
        inspection.find_config("bigcode/starcoder2-3b", revision="abc")
    assert "`sc2 download bigcode/starcoder2-3b --revision abc`" in str(missing.value)


def test_model_report_is_what_the_command_prints(isolated, checkpoint):
    report = inspection.model_report(str(checkpoint))
    assert list(report) == ["model", "source", "path", "revision", "note", "config", "parameters", "memory",
                            "kv_cache", "devices", "versions"]
    printed = json.loads(invoke(["info", str(checkpoint), "--json"]).stdout)
    assert printed == report


@pytest.mark.parametrize("capability", [devices.AVX512_VNNI_CPU, devices.AVX512_CPU, devices.AVX2_CPU])
def test_the_cpu_kernels_sc2_picks_are_reported(isolated, monkeypatch, capability):
    """How bf16 weights are multiplied (oneDNN's bf16 GEMM or the float32 one) and whether int8 runs full-range
    (VNNI) on this machine."""
    monkeypatch.setattr(devices, "cpu_capability", lambda: capability)
    cpu = machine.devices()["cpu"]
    assert (cpu["capability"], cpu["onednn_bf16"], cpu["int8_vnni"]) == (
        capability.isa, capability.onednn_bf16, capability.int8_vnni)
    shown = rows(invoke(["info", "sc2-tiny"]).stdout)["cpu kernels"]
    native = kernels.isa_for(capability.isa) if kernels.available() else None
    decode = {"avx2": "sc2 AVX2 kernel", "avx512": "sc2 AVX-512 kernel", "avx512bf16": "sc2 AVX-512 BF16 kernel",
              None: "mv"}[native]
    # Without bf16 arithmetic (AVX2), or on AVX-512 without bf16 instructions, a prompt's rows take the kernel too.
    if native == "avx512":
        products = f"{decode}, prompts too (no bf16 instructions)"
    elif capability.onednn_bf16:
        products = f"{decode} + oneDNN bf16 GEMM"
    elif native:
        products = f"{decode}, prompts too (no bf16 arithmetic)"
    else:
        products = f"{decode} + float32 GEMM (no bf16 arithmetic)"
    assert cpu["native_kernels"] == native
    assert shown == f"bf16 by {products}, full-range int8 {'yes' if capability.int8_vnni else 'no'} (AVX-512 VNNI)"


def test_info_says_why_the_native_kernels_are_missing(isolated, monkeypatch):
    monkeypatch.setattr(kernels, "_load", lambda: "not built (no C++ compiler)")
    shown = rows(invoke(["info", "sc2-tiny"]).stdout)
    assert shown["native kernels"] == "none: not built (no C++ compiler)"
    assert shown["cpu kernels"].startswith("bf16 by mv + ")


def test_this_machine(isolated):
    found = machine.devices()
    assert found["cpu"]["threads"] == torch.get_num_threads()
    assert found["cpu"]["capability"] == torch.backends.cpu.get_cpu_capability()
    assert found["cuda"] == [] or found["cuda"][0]["index"] == 0
    assert found["auto"]["device"] in ("cpu", "cuda", "mps")
    versions = machine.versions()
    assert versions["torch"] and versions["python"] and list(versions)[-1] == "python"


def test_render_lists_each_cuda_device():
    report = inspection.config_summary(preset_config("starcoder2-3b"))
    r = {"model": "m", "source": "preset", "path": None, "revision": None, "note": "n", "config": report,
         **sizes(preset_config("starcoder2-3b")),
         "devices": {"cpu": {"threads": 4, "cores": 8, "capability": "AVX2", "onednn_bf16": False,
                             "int8_vnni": False, "native_kernels": "avx2", "native_kernels_missing": None},
                     "cuda": [{"index": 0, "name": "GPU", "memory_bytes": 80 * 2**30, "capability": "9.0"}],
                     "mps": False, "auto": {"device": "cuda", "dtype": "bfloat16"}},
         "versions": {"sc2cli": "0", "python": "3"}}
    shown = rows(render(r))
    assert shown["cuda:0"] == "GPU, 80.00 GiB, compute 9.0" and "cuda" not in shown
    assert shown["cpu kernels"] == ("bf16 by sc2 AVX2 kernel, prompts too (no bf16 arithmetic), full-range int8 "
                                    "no (AVX-512 VNNI)")
