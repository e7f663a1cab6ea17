"""Compiled fast path of ``metricsflow.model.lineprotocol.canonicalize`` (native/lp)."""

def canonicalize(
    body: bytes,
    precision_factor: int,
    default_time_ns: int,
    limits: tuple[int, int, int, int, int, bool, int, int],
    /,
) -> tuple[list[str], list[str], list[tuple[int, int, int, int]]] | None: ...
def encode_partitioned(
    series_keys: list[str],
    lines: list[str],
    partitions: int,
    max_bytes: int,
    /,
) -> list[tuple[int, list[tuple[bytes, bytes | None]]]] | None: ...
def murmur2(data: bytes, /) -> int: ...
