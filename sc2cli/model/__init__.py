"""The model layer: StarCoder2 in plain PyTorch, under the reference's names.

`from sc2cli.model import Starcoder2ForCausalLM`. The classes are imported on first use, so reading a config
(`sc2cli.model.config`) never imports torch.
"""

from __future__ import annotations

from ..lazy import export

_EXPORTS = {
    "Starcoder2Config": ".config",
    "preset_config": ".presets",
    "ModelOutput": ".transformer",
    "Starcoder2Model": ".transformer",
    "Starcoder2ForCausalLM": ".transformer",
    "Starcoder2PreTrainedModel": ".transformer",
    "Starcoder2ForSequenceClassification": ".heads",
    "Starcoder2ForTokenClassification": ".heads",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    return export(globals(), _EXPORTS, name)
