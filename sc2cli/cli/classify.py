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
With `--lines` each non-empty line is an example of its own; the lines are batched with left padding.

Examples:
  sc2 classify -m ./issue-classifier "Crash when the file is empty"
  sc2 classify -m ./issue-classifier --lines --top 1 < titles.txt
  sc2 classify -m ./ner-model --tokens "def parse(path):"
  sc2 classify -m bigcode/starcoder2-3b --labels python,rust,go "# language: "
"""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from ..errors import UsageError
from . import common, output
from .options import DeviceOpt, DtypeOpt, JsonOpt, ModelOpt, OfflineOpt, RevisionOpt

SEQUENCE = "Starcoder2ForSequenceClassification"
TOKENS = "Starcoder2ForTokenClassification"
CAUSAL = "Starcoder2ForCausalLM"
MODES = {SEQUENCE: "sequence", TOKENS: "tokens", CAUSAL: "zero-shot"}
KINDS = {SEQUENCE: "a sequence-classification model", TOKENS: "a token-classification model", CAUSAL: "a causal LM"}
BATCH_ROWS = 16  # rows per forward pass (lines, or zero-shot labels)


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
        "--lines", help="Classify each non-empty line of the input as its own example.")] = False,
    top: Annotated[Optional[int], typer.Option(
        "--top", help="Show only the K best labels (default: all).", show_default=False)] = None,
    json_out: JsonOpt = False,
) -> None:
    """Classify TEXT: labels and scores from a classification checkpoint, or zero-shot with --labels."""
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
    examples = split_examples(data, lines, from_stdin)

    from .. import hub
    from ..load import load_config

    ref = common.model_ref(model)
    path = hub.resolve(ref, revision=revision, offline=offline)
    config = load_config(path)
    arch = architecture(config, ref)
    check_mode(arch, ref, tokens, label_names)

    loaded = load_classifier(ref, path, arch, device, dtype, offline)
    mode = MODES[arch]
    if mode == "sequence":
        results, scoring = sequence_results(loaded, examples, top)
    elif mode == "tokens":
        results, scoring = token_results(loaded, examples), "softmax"
    else:
        results, scoring = zero_shot_results(loaded, examples, label_names, top), "softmax over log-likelihoods"

    if not lines:
        for result in results:
            result.pop("line")
    if json_out:
        output.write_json({"model": loaded.name, "mode": mode, "scoring": scoring, "results": results})
    elif mode == "tokens":
        blocks = ["".join(f"{visible(t['token'])}\t{visible(t['label'])}\t{t['score']:.4f}\n" for t in r["tokens"])
                  for r in results]
        output.write("\n".join(blocks))
    elif lines:
        output.write("".join(f"{visible(r['labels'][0]['label'])}\t{r['labels'][0]['score']:.4f}\n"
                             for r in results))
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


def split_examples(data: str, lines: bool, from_stdin: bool) -> list[tuple[int, str]]:
    """(1-based line number, text) pairs: every non-empty line, or the whole text as line 1."""
    if lines:
        examples = [(n, line) for n, line in enumerate(data.splitlines(), 1) if line.strip()]
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


# ---- model ----------------------------------------------------------------------------------------------------
def architecture(config, ref: str) -> str:
    """The head named by the config's `architectures` (a causal LM when absent)."""
    archs = getattr(config, "architectures", None)
    if not archs:
        return CAUSAL
    arch = archs[0] if isinstance(archs, (list, tuple)) else archs
    if arch not in MODES:
        raise UsageError(f"{ref} is a {arch} checkpoint; sc2 classify needs {SEQUENCE}, {TOKENS} or {CAUSAL}")
    return arch


def check_mode(arch: str, ref: str, tokens: bool, labels: list[str] | None) -> None:
    kind = KINDS[arch]
    if arch == SEQUENCE:
        if tokens:
            raise UsageError(f"--tokens needs a token-classification checkpoint; {ref} is {kind} (drop --tokens)")
        if labels is not None:
            raise UsageError(f"--labels is for zero-shot with a causal LM; {ref} is {kind} with its own labels "
                             "(drop --labels)")
    elif arch == TOKENS:
        if not tokens:
            raise UsageError(f"{ref} is {kind}: pass --tokens for one label per token")
    elif tokens:
        raise UsageError(f"--tokens needs a token-classification checkpoint; {ref} is {kind} "
                         "(use --labels a,b,c for zero-shot)")
    elif labels is None:
        raise UsageError(f"{ref} is {kind}, not a classifier: pass --labels a,b,c for zero-shot, "
                         "or use a classification checkpoint")


def load_classifier(ref, path, arch: str, device, dtype, offline: bool):
    from .. import modeling, settings
    from ..load import load

    device = device or settings.get("device")[0]
    dtype = dtype or settings.get("dtype")[0]
    loaded = load(str(path), device=device, dtype=dtype, offline=offline, model_class=getattr(modeling, arch))
    loaded.name = ref
    if sys.stderr.isatty():
        m = loaded.model
        output.status(f"loaded {ref} on {m.device} ({str(m.dtype).removeprefix('torch.')}) "
                      f"in {loaded.load_seconds:.2f}s")
    return loaded


def encode_examples(loaded, examples: list[tuple[int, str]], extra: int = 0) -> list[list[int]]:
    """Token ids of each example; one that cannot fit the context (with `extra` more tokens) is refused."""
    context = loaded.model.config.max_position_embeddings
    rows = []
    for line, text in examples:
        ids = loaded.tokenizer.encode(text)
        if len(ids) + extra > context:
            where = f"line {line} has" if len(examples) > 1 or line > 1 else "the text has"
            plus = f" (+ {extra} label tokens)" if extra else ""
            raise UsageError(f"{where} {len(ids)} tokens{plus}; the model's context holds {context}")
        rows.append(ids)
    return rows


def left_padded_batches(rows: list[list[int]], pad_id: int, batch_rows: int, device):
    """Yield (row indices, ids, mask, positions) for batches of similar length, padded on the left."""
    import torch

    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    for start in range(0, len(order), batch_rows):
        chosen = order[start:start + batch_rows]
        width = max(len(rows[i]) for i in chosen)
        ids = torch.full((len(chosen), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chosen), width), dtype=torch.long)
        for r, i in enumerate(chosen):
            ids[r, width - len(rows[i]):] = torch.tensor(rows[i], dtype=torch.long)
            mask[r, width - len(rows[i]):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        yield chosen, ids.to(device), mask.to(device), positions.to(device)


def fallback_pad_id(loaded) -> int:
    pad = loaded.model.config.pad_token_id
    if pad is None:
        pad = loaded.tokenizer.eos_id
    return 0 if pad is None else pad


# ---- modes ----------------------------------------------------------------------------------------------------
def sequence_scoring(config) -> str:
    if config.problem_type == "multi_label_classification":
        return "sigmoid"
    if config.problem_type == "regression" or config.num_labels == 1:
        return "regression"
    return "softmax"


def ranked(names: list[str], scores: list[float], top: int | None) -> list[dict]:
    items = sorted(({"label": n, "score": s} for n, s in zip(names, scores)), key=lambda d: -d["score"])
    return items[:top] if top is not None else items


def sequence_results(loaded, examples, top: int | None) -> tuple[list[dict], str]:
    import torch

    model = loaded.model
    config = model.config
    rows = encode_examples(loaded, examples)
    # The head pools the right-most token that is not the pad id: without a pad id, rows run one at a time.
    pad = config.pad_token_id
    batch_rows = BATCH_ROWS if pad is not None else 1
    logits: list = [None] * len(rows)
    with torch.inference_mode():
        for chosen, ids, mask, positions in left_padded_batches(rows, pad or 0, batch_rows, model.device):
            out = model(ids, attention_mask=mask, position_ids=positions).logits.float().cpu()
            for r, i in enumerate(chosen):
                logits[i] = out[r]
    scoring = sequence_scoring(config)
    names = [config.id2label[i] for i in range(config.num_labels)]
    results = []
    for (line, text), ids, row in zip(examples, rows, logits):
        if scoring == "softmax":
            scores = torch.softmax(row, -1)
        elif scoring == "sigmoid":
            scores = torch.sigmoid(row)
        else:
            scores = row
        results.append({"line": line, "text": text, "num_tokens": len(ids),
                        "labels": ranked(names, scores.tolist(), top)})
    return results, scoring


def token_results(loaded, examples) -> list[dict]:
    import torch

    model, tokenizer = loaded.model, loaded.tokenizer
    config = model.config
    rows = encode_examples(loaded, examples)
    probs: list = [None] * len(rows)
    with torch.inference_mode():
        for chosen, ids, mask, positions in left_padded_batches(rows, fallback_pad_id(loaded), BATCH_ROWS,
                                                                 model.device):
            out = torch.softmax(model(ids, attention_mask=mask, position_ids=positions).logits.float(), -1).cpu()
            for r, i in enumerate(chosen):
                probs[i] = out[r, out.shape[1] - len(rows[i]):]
    results = []
    for (line, text), ids, p in zip(examples, rows, probs):
        best, best_id = p.max(-1)
        items = [{"token": tokenizer.decode([tid]), "id": tid, "label": config.id2label[int(label)],
                  "score": float(score)} for tid, label, score in zip(ids, best_id.tolist(), best.tolist())]
        results.append({"line": line, "text": text, "num_tokens": len(ids), "tokens": items})
    return results


def zero_shot_results(loaded, examples, names: list[str], top: int | None) -> list[dict]:
    """Each label scored as `encode(text) + encode(label)`: logp(label tokens | text), summed over the tokens."""
    import torch

    model, tokenizer = loaded.model, loaded.tokenizer
    label_ids = [tokenizer.encode(name) for name in names]
    texts = encode_examples(loaded, examples, extra=max(len(ids) for ids in label_ids))
    pad = fallback_pad_id(loaded)
    results = []
    with torch.inference_mode():
        for (line, text), prompt in zip(examples, texts):
            totals = label_logprobs(model, prompt, label_ids, pad)
            probs = torch.softmax(torch.tensor(totals, dtype=torch.float64), -1).tolist()
            items = [{"label": n, "score": p, "logprob": t, "mean_logprob": t / len(ids), "num_tokens": len(ids)}
                     for n, p, t, ids in zip(names, probs, totals, label_ids)]
            items.sort(key=lambda d: -d["score"])
            results.append({"line": line, "text": text, "num_tokens": len(prompt),
                            "labels": items[:top] if top is not None else items})
    return results


def label_logprobs(model, prompt: list[int], label_ids: list[list[int]], pad_id: int) -> list[float]:
    """Summed log-probabilities of each label's tokens after `prompt`: rows `prompt + label`, right-padded."""
    import torch

    totals: list[float] = []
    n = len(prompt)
    for start in range(0, len(label_ids), BATCH_ROWS):
        chunk = label_ids[start:start + BATCH_ROWS]
        width = n + max(len(ids) for ids in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, label in enumerate(chunk):
            ids[r, :n + len(label)] = torch.tensor(prompt + label, dtype=torch.long)
            mask[r, :n + len(label)] = 1
        # Logits from the prompt's last position on: position n - 1 + j predicts label token j.
        logits = model(ids.to(model.device), attention_mask=mask.to(model.device),
                       logits_to_keep=width - n + 1).logits
        logp = torch.log_softmax(logits.float(), -1).cpu()
        for r, label in enumerate(chunk):
            picked = logp[r, torch.arange(len(label)), torch.tensor(label)]
            totals.append(float(picked.double().sum()))
    return totals
