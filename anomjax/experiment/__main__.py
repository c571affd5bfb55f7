"""``python -m anomjax.experiment --config FILE.py[:ARG] [--config.FIELD=V ...] --out RUN``."""

import sys

from anomjax.cli import main

sys.exit(main(["run", *sys.argv[1:]]))
