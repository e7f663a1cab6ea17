"""Counters of the tier window operators (metrics, not state)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class TierWindowMetrics:
    """Counters of one operator instance (all its key groups); metrics, not state."""

    late_points: int = 0
    """raw points beyond the allowed lateness, sent to side output ``"late"``"""
    late_partials: int = 0
    """partial rows beyond the allowed lateness (impossible with a valid cascade; logged)"""
    fired_windows: int = 0
    """(key, window) aggregates emitted because the watermark passed the window's end"""
    reemitted_windows: int = 0
    """(key, window) aggregates emitted again because late rows updated a fired window"""
    input_rows: int = 0
    correction_requests: int = 0
    """(key, window) pairs sent to be re-derived because their state was gone"""
    corrected_rows: int = 0
    """re-derived (key, window) rows emitted (``tier_corrections_total``)"""
    correction_lag_ns_sum: int = 0
    """sum over corrections of (emitted - requested) wall time; with ``corrections``"""
    corrections: int = 0
    correction_lag_ns_max: int = 0
    expired_keys: int = 0
    """keys dropped from the key dictionary: all their windows purged (keys.py, expiry)"""
    declared_kinds: int = 0
    """measurements whose kind a ``kinds1`` declaration changed (declared.py)"""
