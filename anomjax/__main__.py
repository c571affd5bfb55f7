"""``python -m anomjax ...`` is the ``anomjax`` command."""

import sys

from anomjax.cli import main

sys.exit(main())
