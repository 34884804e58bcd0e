"""``python -m evmamba`` is the ``evmamba`` command."""

import sys

from .cli import main

sys.exit(main())
