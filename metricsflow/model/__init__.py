"""The data model shared by the gateway and the worker; public names live in :mod:`.base`."""

from metricsflow.model.base import *  # noqa: F403
from metricsflow.model.base import __all__ as __all__
