"""sc2: StarCoder2 code completion from the terminal, in plain PyTorch.

Importing the package is cheap (no torch); the model classes live in `sc2cli.model`.
"""

__version__ = "0.1.0"
