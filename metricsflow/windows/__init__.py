"""The tier window operator (tumbling event-time windows over partials); the tiers
themselves are data model (:mod:`metricsflow.model.tiers`), re-exported here."""

from metricsflow.model.tiers import (
    AGGREGATES,
    DEFAULT_TIERS,
    RAW_TIER,
    TierSpec,
    tier_field_name,
    validate_tiers,
)
from metricsflow.windows.cascade import build_cascade
from metricsflow.windows.metrics import TierWindowMetrics
from metricsflow.windows.operator import TierWindowOperator

__all__ = [
    "AGGREGATES",
    "DEFAULT_TIERS",
    "RAW_TIER",
    "TierSpec",
    "TierWindowMetrics",
    "TierWindowOperator",
    "build_cascade",
    "tier_field_name",
    "validate_tiers",
]
