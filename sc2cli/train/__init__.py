"""Training: the tokenizer (`bpe`), the data in StarCoder2's format (`data`), and the trainer (`trainer`).

`python -m sc2cli.train export RUN_DIR DEST` copies a finished run as a shippable checkpoint.
"""
