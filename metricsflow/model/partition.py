"""Partitioning: exactly Kafka's default (Java) partitioner for a record keyed by the series key.

``partition = (murmur2(series_key.encode("utf-8")) & 0x7fffffff) % P``

A third-party producer that keys single-point records by the series key with the Java
client, librdkafka's ``murmur2_random`` partitioner, or aiokafka's ``DefaultPartitioner``
lands every point of a series in the same partition as the gateway does. ``P`` is read from
the topic's metadata; the hash is cached per series key (series repeat; the pure-Python
murmur2 costs microseconds).
"""

from __future__ import annotations

from functools import lru_cache

from aiokafka.partitioner import murmur2


@lru_cache(maxsize=1 << 20)
def series_hash(series_key: str) -> int:
    """The positive murmur2 hash of the UTF-8 series key (Kafka's ``toPositive(murmur2(key))``)."""
    return int(murmur2(series_key.encode("utf-8"))) & 0x7FFFFFFF


def partition_for(series_key: str, partitions: int) -> int:
    """The partition of a series among ``partitions`` partitions."""
    return series_hash(series_key) % partitions
