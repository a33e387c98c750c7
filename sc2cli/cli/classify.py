"""`sc2 classify`: label a text with a classification checkpoint, or zero-shot with a plain causal LM.

The mode follows the checkpoint's config.json `architectures`:
  Starcoder2ForSequenceClassification  labels and scores from the config's `id2label` (softmax; sigmoid per
                                       label for multi-label problems; the raw value for regression)
  Starcoder2ForTokenClassification     `--tokens`: one label per token
  Starcoder2ForCausalLM                `--labels a,b,c`: zero-shot; each label is scored as a continuation of
                                       the text by its log-likelihood, the scores are a softmax over the labels

Zero-shot label tokens are `encode(text) + encode(label)`, concatenated as they are: nothing is inserted
between the text and the label, so end the text with the separator you want (a space, a newline, ": ").
Labels are split on commas and stripped of surrounding whitespace.

Text read from stdin loses one trailing newline, so `echo TEXT | sc2 classify` and `sc2 classify TEXT` agree.
With `--lines` each non-blank line is an example of its own (lines end at "\n", as for `wc -l`, `paste` and `nl`;
a "\r" before it is dropped); the lines are batched with left padding. The table has one row per input line, an
empty row for a blank one, so `paste input.txt <(sc2 classify --lines < input.txt)` lines up; `--json` gives
each result its line number.

Examples:
  sc2 classify -m ./issue-classifier "Crash when the file is empty"
  sc2 classify -m ./issue-classifier --lines --top 1 < titles.txt
  sc2 classify -m ./ner-model --tokens "def parse(path):"
  sc2 classify -m bigcode/starcoder2-3b --labels python,rust,go "# language: "
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..errors import UsageError
from . import common, output
from .options import DeviceOpt, DtypeOpt, JsonOpt, ModelOpt, OfflineOpt, RevisionOpt


def classify(
    text: Annotated[Optional[str], typer.Argument(
        help="Text to classify; '-' or nothing reads stdin.", show_default=False)] = None,
    model: ModelOpt = None,
    revision: RevisionOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    offline: OfflineOpt = False,
    labels: Annotated[Optional[str], typer.Option(
        "--labels", help="Zero-shot with a causal LM: comma-separated labels, each scored as a continuation "
        "of the text.", show_default=False)] = None,
    tokens: Annotated[bool, typer.Option(
        "--tokens", help="One label per token (needs a token-classification checkpoint).")] = False,
    lines: Annotated[bool, typer.Option(
        "--lines", help="Classify each line of the input on its own: one row per line (empty for a blank "
        "line).")] = False,
    top: Annotated[Optional[int], typer.Option(
        "--top", help="Show only the K best labels (default: all).", show_default=False)] = None,
    json_out: JsonOpt = False,
) -> None:
    """Classify TEXT: labels and scores from a classification checkpoint, or zero-shot with --labels."""
    from .. import model as model_classes
    from ..classification import ClassifyRequest, architecture, check_mode, classify as run_classification

    if top is not None and top < 1:
        raise UsageError(f"--top must be at least 1 (got {top})")
    if tokens and labels is not None:
        raise UsageError("--tokens and --labels do not go together: --tokens needs a token-classification "
                         "checkpoint, --labels a causal LM")
    if tokens and top is not None:
        raise UsageError("--top ranks the labels of a text; it does not apply to --tokens")
    label_names = parse_labels(labels) if labels is not None else None
    from_stdin = text is None or text == "-"
    data = common.read_text_input(text, what="text")
    request = ClassifyRequest(split_examples(data, lines, from_stdin), label_names, tokens, top)

    checkpoint = common.open_checkpoint(model, revision, offline)
    arch = architecture(checkpoint.config, checkpoint.ref)
    check_mode(arch, checkpoint.ref, tokens, label_names)
    loaded = common.load_model(model, revision, device, dtype, offline, model_class=getattr(model_classes, arch),
                               checkpoint=checkpoint)
    result = run_classification(request, loaded)
    results = result.results
    if not lines:
        for row in results:
            row.pop("line")
    if json_out:
        output.write_json({"model": loaded.name, "mode": result.mode, "scoring": result.scoring, "results": results})
    elif result.mode == "tokens":
        blocks = ["".join(f"{visible(t['token'])}\t{visible(t['label'])}\t{t['score']:.4f}\n" for t in r["tokens"])
                  for r in results]
        output.write("\n".join(blocks))
    elif lines:  # one row per input line, blank lines too, so that the rows line up with the input
        rows = {r["line"]: f"{visible(r['labels'][0]['label'])}\t{r['labels'][0]['score']:.4f}" for r in results}
        output.write("".join(f"{rows.get(n, '')}\n" for n in range(1, count_lines(data) + 1)))
    else:
        output.write("".join(f"{visible(item['label'])}\t{item['score']:.4f}\n" for item in results[0]["labels"]))


# ---- input ----------------------------------------------------------------------------------------------------
def parse_labels(raw: str) -> list[str]:
    names = [name.strip() for name in raw.split(",")]
    if not any(names):
        raise UsageError("--labels needs at least two labels, e.g. --labels bug,feature,question")
    if "" in names:
        raise UsageError(f"--labels {raw!r} has an empty label; separate labels with single commas")
    if len(names) < 2:
        raise UsageError(f"--labels needs at least two labels to choose between (got only {names[0]!r})")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise UsageError(f"--labels repeats {duplicates[0]!r}; give each label once")
    return names


def input_lines(data: str) -> list[str]:
    """The lines of the input as Unix tools count them: ended by "\n" only (not by the form feeds, "\x1c" or
    U+2028 that str.splitlines also breaks at), without a "\r" before it; no empty last line after a final "\n"."""
    lines = data.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def count_lines(data: str) -> int:
    return len(input_lines(data))


def split_examples(data: str, lines: bool, from_stdin: bool) -> list[tuple[int, str]]:
    """(1-based line number, text) pairs: every non-blank line, or the whole text as line 1."""
    if lines:
        examples = [(n, line) for n, line in enumerate(input_lines(data), 1) if line.strip()]
        if not examples:
            raise UsageError("the input has no non-empty lines to classify")
        return examples
    if from_stdin:
        data = data.removesuffix("\n").removesuffix("\r")
        if not data:
            raise UsageError("the text is empty")
    return [(1, data)]


def visible(text: str) -> str:
    """Text safe for one tab-separated field: backslash, newline, tab and other unprintables escaped repr-like."""
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == " " or ch.isprintable():
            out.append(ch)
        else:
            out.append(repr(ch)[1:-1])  # \n, \t, \r, \x0b, \u2028 ...
    return "".join(out)


