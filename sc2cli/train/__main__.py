"""`python -m sc2cli.train export RUN_DIR DEST`: a finished run as a shippable checkpoint (what `make tiny-model`
ends with)."""

import sys

from .trainer import export

if len(sys.argv) == 4 and sys.argv[1] == "export":
    print(export(sys.argv[2], sys.argv[3]))
else:
    sys.exit("usage: python -m sc2cli.train export RUN_DIR DEST")
