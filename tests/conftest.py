import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # test helpers (oracle, tokenizer fixture) import by name
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Max |difference| per parity case, printed at the end of the run (the figures quoted in closing notes).
PARITY_REPORT: dict[str, float] = {}


def pytest_terminal_summary(terminalreporter):
    if not PARITY_REPORT:
        return
    terminalreporter.section("parity against the oracles: transformers, llama.cpp (max |diff|)")
    for case, diff in sorted(PARITY_REPORT.items()):
        terminalreporter.write_line(f"{case:<60} {diff:.3e}")
