"""A small tokenizer built like StarCoder2's, trained in milliseconds for tests that need no real checkpoint.

Same shape as the released tokenizer.json (spec §8.1): byte-level BPE, digits split one per token before
the GPT-2 byte-level regex, ByteLevel decoder, no post-processor (so no BOS/EOS), and the 38 special
tokens of §8.2 as ids 0..37. Training on a fixed corpus is deterministic, so every build is identical.
"""

from __future__ import annotations

import functools
from pathlib import Path

from tokenizers import Tokenizer

from sc2cli.train.bpe import train_bpe

TEST_VOCAB_SIZE = 1024  # specials + 256 byte symbols + merges; small enough for tiny test models

_CODE = '''\
import os
import sys
from pathlib import Path
from typing import Optional


def fibonacci(n: int) -> int:
    """Return the n-th Fibonacci number."""
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)


class Counter:
    def __init__(self, start: int = 0) -> None:
        self.value = start

    def increment(self, step: int = 1) -> int:
        self.value += step
        return self.value

    def __repr__(self) -> str:
        return f"Counter(value={self.value})"


def read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return [line.rstrip("\\n") for line in handle]


def main(argv: Optional[list[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    for name in args:
        if not os.path.exists(name):
            print(f"missing: {name}", file=sys.stderr)
            continue
        total = sum(len(line) for line in read_lines(name))
        print(name, total)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
'''

_OTHER = [
    "import json\n\ndef load_config(path):\n    try:\n        with open(path) as fp:\n"
    "            return json.load(fp)\n    except FileNotFoundError:\n        return {}\n"
    "    except json.JSONDecodeError as error:\n        raise ValueError(f'bad config: {error}') from error\n",
    "async def fetch_all(session, urls):\n    results = await asyncio.gather(*(session.get(u) for u in urls))\n"
    "    return {url: response.status for url, response in zip(urls, results)}\n",
    "#include <stdio.h>\n\nint main(int argc, char **argv) {\n    for (int i = 0; i < argc; ++i) {\n"
    "        printf(\"%d: %s\\n\", i, argv[i]);\n    }\n    return 0;\n}\n",
    "<html>\n  <body class=\"container\">\n    <div id=\"app\"></div>\n  </body>\n</html>\n",
    "#!/usr/bin/env bash\nset -euo pipefail\nfor file in \"$@\"; do\n  echo \"processing $file\"\ndone\n",
    "function add(a, b) {\n\treturn a + b;\n}\r\nconsole.log(add(1, 2));\r\n",
    "fn main() {\n    let xs: Vec<u32> = (0..10).collect();\n    println!(\"{:?}\", xs);\n}\n",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;\n",
    "# café, naïve, résumé, façade; 日本語のテキスト; Ελληνικά; русский текст\n",
    "print('hello 🌍 world 🎉 ok 👍')  # emoji: 😀 🚀 ✨\n",
    "x = [1, 2, 3]  # 12345 67890 3.14159 0xFF 1e-10\n",
    "    \n\n\n  trailing spaces   \n\t\ttabs\t\n",
]


def _corpus() -> list[str]:
    return [_CODE, *_OTHER, _CODE.replace("    ", "\t"), _CODE.upper()]


def train_test_tokenizer() -> Tokenizer:
    """Train the test tokenizer from scratch (always the same result)."""
    tok = train_bpe(_corpus(), TEST_VOCAB_SIZE)
    if tok.get_vocab_size() != TEST_VOCAB_SIZE:
        raise RuntimeError(f"test corpus too small: vocab {tok.get_vocab_size()} < {TEST_VOCAB_SIZE}")
    return tok


@functools.cache
def _test_tokenizer_json() -> str:
    return train_test_tokenizer().to_str()


def build_test_tokenizer(path: str | Path | None = None) -> Tokenizer:
    """A fresh copy of the test tokenizer (trained once per process); also saved to `path` if given."""
    tok = Tokenizer.from_str(_test_tokenizer_json())
    if path is not None:
        Path(path).write_text(_test_tokenizer_json(), encoding="utf-8")
    return tok


def write_test_tokenizer(directory: str | Path) -> Path:
    """Write `tokenizer.json` into `directory` (created if needed); return its path."""
    path = Path(directory) / "tokenizer.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    build_test_tokenizer(path)
    return path
