"""Checkpoints out of sc2, for other engines: `gguf` writes llama.cpp's format (llama-server, Ollama)."""
