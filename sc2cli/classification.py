"""The classification pipeline: the two classification heads, and zero-shot labels with a causal LM.

The mode follows the checkpoint's config.json `architectures`:
  Starcoder2ForSequenceClassification  labels and scores from the config's `id2label` (softmax; sigmoid per
                                       label for multi-label problems; the raw value for regression)
  Starcoder2ForTokenClassification     one label per token
  Starcoder2ForCausalLM                zero-shot: each label is scored as a continuation of the text by its
                                       log-likelihood; the scores are a softmax over the labels

Zero-shot label tokens are `encode(text) + encode(label)`, concatenated as they are: nothing is inserted
between the text and the label, so end the text with the separator you want (a space, a newline, ": ").
Examples are batched with left padding, rows of similar length together.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InputError

SEQUENCE = "Starcoder2ForSequenceClassification"
TOKENS = "Starcoder2ForTokenClassification"
CAUSAL = "Starcoder2ForCausalLM"
MODES = {SEQUENCE: "sequence", TOKENS: "tokens", CAUSAL: "zero-shot"}
KINDS = {SEQUENCE: "a sequence-classification model", TOKENS: "a token-classification model", CAUSAL: "a causal LM"}
BATCH_ROWS = 16  # rows per forward pass (lines, or zero-shot labels)


@dataclass(frozen=True)
class ClassifyRequest:
    examples: list[tuple[int, str]]  # (1-based line number, text)
    labels: list[str] | None = None  # zero-shot labels (a causal LM)
    tokens: bool = False  # one label per token (a token-classification model)
    top: int | None = None  # keep the K best labels


@dataclass
class ClassifyResult:
    mode: str  # sequence | tokens | zero-shot
    scoring: str
    results: list[dict]


def classify(request: ClassifyRequest, loaded) -> ClassifyResult:
    """Classify each example with a loaded classification model (or zero-shot with a causal LM)."""
    mode = MODES[type(loaded.model).__name__]
    if mode == "sequence":
        results, scoring = sequence_results(loaded, request.examples, request.top)
    elif mode == "tokens":
        results, scoring = token_results(loaded, request.examples), "softmax"
    else:
        results = zero_shot_results(loaded, request.examples, request.labels, request.top)
        scoring = "softmax over log-likelihoods"
    return ClassifyResult(mode, scoring, results)


def architecture(config, ref: str) -> str:
    """The head named by the config's `architectures` (a causal LM when absent)."""
    archs = getattr(config, "architectures", None)
    if not archs:
        return CAUSAL
    arch = archs[0] if isinstance(archs, (list, tuple)) else archs
    if arch not in MODES:
        raise InputError(f"{ref} is a {arch} checkpoint; classification needs {SEQUENCE}, {TOKENS} or {CAUSAL}",
                         field="model")
    return arch


def check_mode(arch: str, ref: str, tokens: bool, labels: list[str] | None) -> None:
    kind = KINDS[arch]
    if arch == SEQUENCE:
        if tokens:
            raise InputError(f"one label per token needs a token-classification checkpoint; {ref} is {kind}",
                             field="tokens")
        if labels is not None:
            raise InputError(f"zero-shot labels are for a causal LM; {ref} is {kind} with its own labels",
                             field="labels")
    elif arch == TOKENS:
        if not tokens:
            raise InputError(f"{ref} is {kind}: it gives one label per token", field="tokens")
    elif tokens:
        raise InputError(f"one label per token needs a token-classification checkpoint; {ref} is {kind} "
                         "(give labels for zero-shot)", field="tokens")
    elif labels is None:
        raise InputError(f"{ref} is {kind}, not a classifier: give labels (a,b,c) for zero-shot, "
                         "or use a classification checkpoint", field="labels")


def encode_examples(loaded, examples: list[tuple[int, str]], extra: int = 0) -> list[list[int]]:
    """Token ids of each example; one that cannot fit the context (with `extra` more tokens) is refused."""
    context = loaded.model.config.max_position_embeddings
    rows = []
    for line, text in examples:
        ids = loaded.tokenizer.encode(text)
        if len(ids) + extra > context:
            where = f"line {line} has" if len(examples) > 1 or line > 1 else "the text has"
            plus = f" (+ {extra} label tokens)" if extra else ""
            raise InputError(f"{where} {len(ids)} tokens{plus}; the model's context holds {context}")
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
