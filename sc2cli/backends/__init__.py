"""What a pipeline needs from a model, and where it runs.

`base.Backend` is the seam: a context size, a tokenizer and a stream of generated steps. `local.LocalBackend`
runs sc2's own engine in this process; a server or a remote engine plugs in as another implementation, with no
second copy of the FIM or completion logic.
"""
