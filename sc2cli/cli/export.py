"""`sc2 export gguf`: a checkpoint as one GGUF file, for llama.cpp's llama-server and Ollama.

Examples:
  sc2 export gguf sc2-tiny sc2-tiny-f16.gguf
  sc2 export gguf runs/mine mine-q8.gguf --type q8_0
  sc2 export gguf bigcode/starcoder2-3b sc2-3b-bf16.gguf --type bf16
  llama-server -m sc2-tiny-f16.gguf --port 8012        # then llama.vim, or `sc2 infill --server`
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import Sc2Error
from . import common, output
from .options import OfflineOpt, RevisionOpt

app = typer.Typer(help="Write checkpoints for other engines (GGUF for llama.cpp and Ollama).", no_args_is_help=True)


@app.command("gguf")
def export_gguf(
    checkpoint: Annotated[str, typer.Argument(help="Hub id, checkpoint folder or sc2-tiny.", metavar="CHECKPOINT")],
    out: Annotated[str, typer.Argument(help="The .gguf file to write (replaced atomically).", metavar="OUT")],
    type_: Annotated[str, typer.Option("--type", help="f32 | f16 | bf16 | q8_0: how the matrices are stored.",
                                       metavar="NAME")] = "f16",
    revision: RevisionOpt = None,
    offline: OfflineOpt = False,
) -> None:
    """Write CHECKPOINT as a GGUF file OUT for llama.cpp (llama-server, llama-cpp-python) and Ollama."""
    try:
        from ..export.gguf import export
    except ImportError:
        raise Sc2Error("sc2 export gguf needs the gguf package: pip install 'sc2cli[gguf]'") from None
    folder = common.open_checkpoint(checkpoint, revision, offline).path
    count = export(folder, Path(out), type_.strip().lower(), name=Path(checkpoint).name)
    output.status(f"wrote {out}: {count} tensors ({type_}), {Path(out).stat().st_size / 1e6:.1f} MB")
