"""Shell completion scripts for bash, zsh and fish, generated from the Typer app.

The scripts call `sc2` back with `_SC2_COMPLETE=complete_<shell>` to compute candidates, which never imports
torch. Regenerate the committed copies with `make completions`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from typer._completion_shared import get_completion_script

SHELLS = {"bash": "sc2.bash", "zsh": "_sc2", "fish": "sc2.fish"}


def script(shell: str) -> str:
    return get_completion_script(prog_name="sc2", complete_var="_SC2_COMPLETE", shell=shell).rstrip("\n") + "\n"


def write_all(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for shell, filename in SHELLS.items():
        (directory / filename).write_text(script(shell), encoding="utf-8")


if __name__ == "__main__":
    write_all(Path(sys.argv[1] if len(sys.argv) > 1 else "completions"))
