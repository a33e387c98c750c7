"""`sc2 serve`: one model, loaded once, served over HTTP in the protocols editor plugins already speak.

  app.py        the Starlette app: routes, the API key, body limits, one log line per request
  service.py    the model behind it: admission (slots + a bounded queue), runs in worker threads, cancellation
  fields.py     reading a JSON body field by field (a wrong type is a 400, an unknown field is ignored)
  llamacpp.py   llama.cpp's /infill, /completion, /health (llama.vim, llama.vscode, Continue's llama.cpp)
  openai.py     OpenAI's /v1/completions (with `suffix`: fill-in-the-middle) and /v1/models
  ollama.py     Ollama's /api/generate, /api/show, /api/tags, /api/version (Continue, Twinny, cmp-ai)
  native.py     sc2's own /sc2/v1/infill and /sc2/v1/complete: what `sc2 infill --server` sends
  client.py     the client side of native.py, for the command line (standard library only, no torch)

Every protocol is an adapter over the same pipelines as the commands (fim.pipeline.fill, completion.complete):
prompt building, budget, middle filters, healing and stop tokens exist once.
"""
