"""Next-token selection: logits processors and sampling, matching transformers' `generate`.

Every processor takes float logits of shape (batch, vocab) and returns a NEW tensor (none works
in place), filtering with -inf and keeping at least one token, exactly as transformers does
with min_tokens_to_keep=1. They use only vectorised torch ops and never sync with the host.
"""

from __future__ import annotations

import os

import torch

from .params import SamplingParams

_NEG_INF = float("-inf")


def apply_repetition_penalty(
    logits: torch.Tensor, seen_ids: torch.Tensor, penalty: float, seen_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """CTRL penalty on every id in `seen_ids` (batch, n): x<0 -> x*penalty, else x/penalty, once per id.

    transformers gathers from the raw `input_ids`, so in a left-padded batch it also penalises the
    pad id. Our batched engine passes `seen_mask` (True = real token) so a padded row gets exactly
    the result it would get alone.
    """
    vocab = logits.shape[-1]
    # Invalid/out-of-vocab ids go to a sentinel column vocab, dropped below (transformers' trick).
    ids = seen_ids.clamp(max=vocab)
    if seen_mask is not None:
        ids = ids.masked_fill(~seen_mask, vocab)
    hit = torch.zeros(logits.shape[0], vocab + 1, dtype=torch.bool, device=logits.device)
    hit.scatter_(-1, ids, True)
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(hit[:, :vocab], penalised, logits)


def apply_temperature(logits: torch.Tensor, t: float) -> torch.Tensor:
    return logits / t


def apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep tokens >= the k-th largest logit (so ties at the boundary all survive); k=0 disables."""
    if k <= 0:
        return logits
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, _NEG_INF)


def apply_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter, transformers' formulation: sort ascending, drop tokens whose cumulative
    probability is <= 1 - p, never drop the single most likely one.

    The exact ops (ascending sort, softmax then cumsum, `<=`) are kept so float rounding and the
    order among tied logits are identical to transformers. Note p=1.0 still drops tokens whose
    cumulative probability underflows to exactly 0; process_logits skips p=1.0 like `generate`.
    """
    sorted_logits, order = torch.sort(logits, descending=False)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cum <= (1 - p)
    drop_sorted[..., -1:] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, _NEG_INF)


def apply_min_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Drop tokens whose probability is < p * (max probability)."""
    probs = torch.softmax(logits, dim=-1)
    top = probs.amax(dim=-1, keepdim=True)
    drop = probs < p * top
    # min_tokens_to_keep=1. The max never fails the test (p <= 1), but mirror transformers anyway.
    drop.scatter_(-1, probs.argmax(dim=-1, keepdim=True), False)
    return logits.masked_fill(drop, _NEG_INF)


def process_logits(
    logits: torch.Tensor,
    params: SamplingParams,
    seen_ids: torch.Tensor | None = None,
    seen_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """float32 cast, then transformers' order: repetition penalty -> temperature -> top_k -> top_p
    -> min_p. The warpers only run when sampling (greedy ignores them, as `generate` does), and each
    is skipped at its neutral value exactly where `generate` skips it."""
    x = logits.float()
    if params.repetition_penalty != 1.0 and seen_ids is not None:
        x = apply_repetition_penalty(x, seen_ids, params.repetition_penalty, seen_mask)
    if params.greedy:
        return x
    if params.temperature != 1.0:
        x = apply_temperature(x, params.temperature)
    if params.top_k != 0:
        x = apply_top_k(x, params.top_k)
    if params.top_p < 1.0:
        x = apply_top_p(x, params.top_p)
    if params.min_p > 0.0:  # min_p=0 is an identity in transformers too
        x = apply_min_p(x, params.min_p)
    return x


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A seeded generator on `device`. seed None draws a fresh 63-bit seed from os.urandom;
    `gen.initial_seed()` returns the seed used, so the CLI can print it for reproduction."""
    if seed is None:
        seed = int.from_bytes(os.urandom(8), "little") >> 1
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def sample(logits: torch.Tensor, generator: torch.Generator | None, greedy: bool) -> torch.Tensor:
    """Pick one token id per row from processed logits -> LongTensor (batch,).

    Greedy is argmax (first index on ties, like transformers); sampling is softmax + multinomial,
    which returns vocabulary ids (not ranks), so filtered (-inf, prob 0) tokens are never drawn.
    """
    if greedy:
        return torch.argmax(logits, dim=-1)
    probs = torch.softmax(logits.float(), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """float32 log-probability of `token_ids` (batch,) under `logits` (batch, vocab).

    Pass the PROCESSED logits: we report the log-probability under the distribution actually
    sampled from (after penalty, temperature and filters; for greedy, the penalised logits).
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)
