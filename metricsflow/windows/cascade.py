"""A cascade of tier window operators: raw -> 1m -> 1h -> 1d (docs/windows.md)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from metricsflow.model.fieldkinds import FieldKinds
from metricsflow.model.tiers import RAW_TIER, TierSpec, validate_tiers
from metricsflow.windows.corrections import CorrectionInbox
from metricsflow.windows.metrics import TierWindowMetrics
from metricsflow.windows.operator import TierWindowOperator


def build_cascade(
    tiers: Iterable[TierSpec],
    allowed_lateness_ns: int = 0,
    *,
    uid_prefix: str = "window",
    corrections: CorrectionInbox | None = None,
    metrics: Mapping[str, TierWindowMetrics] | None = None,
    field_kinds: FieldKinds | None = None,
) -> list[TierWindowOperator]:
    """One operator per windowed tier, chained: tier *i* reads tier *i-1*'s partials.

    All tiers share ``allowed_lateness_ns`` (measured on the raw points' event time). Since a
    coarse window ends no earlier than any fine window inside it, a fine partial re-emitted
    within the lateness is always within the coarse tier's lateness too. Uids are
    ``f"{uid_prefix}-{tier.name}"``. With ``corrections`` (where re-derived windows come
    back), windows whose state is gone are corrected instead of left as they were.
    ``metrics``: shared counters per tier name (else each operator counts for itself).
    ``field_kinds``: which fields get counter and sketch columns (none when ``None``). A
    counter's last sample is kept for as long as the raw tier keeps it (its retention).
    """
    specs = validate_tiers(tuple(tiers))
    operators: list[TierWindowOperator] = []
    kind_cache: dict[str, int] = {}  # the tiers of a chain see the same window keys
    previous = 0
    previous_name = RAW_TIER
    for tier in specs[1:]:
        operators.append(
            TierWindowOperator(
                f"{uid_prefix}-{tier.name}",
                tier,
                allowed_lateness_ns,
                input_window_ns=previous,
                input_tier=previous_name,
                corrections=corrections,
                metrics=None if metrics is None else metrics.get(tier.name),
                field_kinds=field_kinds,
                counter_horizon_ns=specs[0].retention_ns,
                kind_cache=kind_cache,
            )
        )
        previous = tier.window_ns
        previous_name = tier.name
    return operators
