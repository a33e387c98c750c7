"""Benchmarks: infill quality (`infill`), decode checks (`decode`), speed against peers (`speed`, with its
checkpoints, workers, roofline, machine facts and tables), and the server from an editor's side (`serve`, with its
workload, client, servers and serve_tables)."""
