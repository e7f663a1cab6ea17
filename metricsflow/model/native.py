"""The compiled fast paths (``metricsflow_lp``, built from ``native/lp`` by ``make deps``).

``native`` is the module, or ``None`` when it is not installed: every caller then runs the
Python implementation, which is the reference the compiled one is tested against
(``tests/model/test_lp_native.py``), with the same results.
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Final

logger = logging.getLogger(__name__)

_FUNCTIONS: Final = ("canonicalize", "encode_partitioned", "murmur2")

native: ModuleType | None
try:
    import metricsflow_lp as native
except ImportError:  # pragma: no cover - `make deps` builds it
    native = None
if native is not None and not all(hasattr(native, f) for f in _FUNCTIONS):  # pragma: no cover
    logger.warning("metricsflow_lp is older than this code (run make deps): using Python")
    native = None

NATIVE: Final = native is not None
"""Whether the compiled fast paths are in use."""
