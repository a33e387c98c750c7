"""The generation layer: tokens in, a stream of generated steps out.

- `engine`: chunked prefill into the KV cache, then the decode loop, streamed as `Step`s (`stream`, `generate`);
- `decode`: how one step runs (eager, static, CUDA graph, compiled);
- `sampling`: logits processors and the sampler; `stopping`: stop strings and text filters;
- `healing`: trailing-whitespace token healing; `lookup`: prompt-lookup drafts.
"""
