"""sc2: StarCoder2 code completion, in plain PyTorch.

    import sc2cli
    model = sc2cli.load("sc2-tiny")          # or a Hub id, or a checkpoint folder
    sc2cli.complete("def fibonacci(n):", model=model).text
    sc2cli.infill("def add(a, b):\\n    return ", "\\n", model=model).text

The model classes mirror the reference's: `sc2cli.Starcoder2ForCausalLM.from_pretrained(folder)`. Everything is
imported on first use, so importing the package (and `sc2 --help`) never imports torch.
"""

from __future__ import annotations

# (under another name: the subpackage `sc2cli.export` becomes this module's attribute `export` once imported)
from .lazy import export as _lazy_export

__version__ = "0.1.0"

_EXPORTS = {
    "load": "sc2cli.api",
    "complete": "sc2cli.api",
    "infill": "sc2cli.api",
    "Starcoder2Config": "sc2cli.model",
    "Starcoder2Model": "sc2cli.model",
    "Starcoder2ForCausalLM": "sc2cli.model",
    "Starcoder2ForSequenceClassification": "sc2cli.model",
    "Starcoder2ForTokenClassification": "sc2cli.model",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    return _lazy_export(globals(), _EXPORTS, name)
