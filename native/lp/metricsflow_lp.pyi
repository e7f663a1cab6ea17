"""Compiled fast path of ``metricsflow.model.lineprotocol.canonicalize`` (native/lp)."""

def canonicalize(
    body: bytes,
    precision_factor: int,
    default_time_ns: int,
    limits: tuple[int, int, int, int, int, bool, int, int],
    /,
) -> tuple[list[str], list[str], list[tuple[int, int, int, int]]] | None: ...
