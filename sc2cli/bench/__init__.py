"""Benchmarks: infill quality (`infill`), decode checks (`decode`), and speed against peers (`speed`, with its
checkpoints, workers, roofline, machine facts and tables)."""
