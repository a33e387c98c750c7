"""What a pipeline needs from a model, and where it runs.

`base.Backend` is the seam: a context size, a tokenizer and a stream of generated steps. `local.LocalBackend`
runs sc2's own engine in this process; `openai_remote.OpenAIBackend` a remote OpenAI-compatible engine (vLLM,
llama.cpp, TGI, sc2 serve), with no second copy of the FIM or completion logic.
"""
