"""Fixed seeds for parametrised tests.

``hash()`` of strings is randomised per Python process, so a seed made from it cannot be recovered after a
failure; :func:`stable_seed` gives the same seed for the same parameters in every process.
"""

from __future__ import annotations

import zlib


def stable_seed(*parts, modulo: int = 10_000) -> int:
    """A seed in ``[0, modulo)`` that depends only on the ``repr`` of ``parts``."""
    return zlib.crc32(repr(parts).encode()) % modulo
