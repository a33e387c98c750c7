"""The model classes under the reference's names: `from sc2cli.modeling import Starcoder2ForCausalLM`."""

from .config import Starcoder2Config
from .heads import Starcoder2ForSequenceClassification, Starcoder2ForTokenClassification
from .model import ModelOutput, Starcoder2ForCausalLM, Starcoder2Model, Starcoder2PreTrainedModel
from .presets import preset_config

__all__ = [
    "ModelOutput",
    "Starcoder2Config",
    "Starcoder2ForCausalLM",
    "Starcoder2ForSequenceClassification",
    "Starcoder2ForTokenClassification",
    "Starcoder2Model",
    "Starcoder2PreTrainedModel",
    "preset_config",
]
