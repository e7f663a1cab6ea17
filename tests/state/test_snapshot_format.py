"""The canonical snapshot file: round trip, and every kind of damage named."""

from __future__ import annotations

import pytest

from metricsflow.errors import CheckpointError
from metricsflow.state.snapshot_format import StateSection, decode, encode


def sample() -> bytes:
    return encode(
        3,
        42,
        "heap",
        [
            StateSection("windows", "msgpack", 1, [(b"a", b"\x01"), (b"b", b"")]),
            StateSection("empty", "int64", 2, []),
        ],
    )


def test_encoded_snapshot_decodes_to_the_same_content() -> None:
    snap = decode(sample())

    assert (snap.format_version, snap.key_group, snap.checkpoint_id, snap.backend) == (
        1,
        3,
        42,
        "heap",
    )
    assert snap.states[0] == StateSection("windows", "msgpack", 1, [(b"a", b"\x01"), (b"b", b"")])
    assert snap.states[1].serializer_version == 2


def test_truncated_snapshot_is_refused_as_truncated() -> None:
    with pytest.raises(CheckpointError, match="'f' is truncated"):
        decode(sample()[:-3], source="f")
    with pytest.raises(CheckpointError, match="truncated"):
        decode(sample()[:10])


def test_flipped_byte_fails_the_crc() -> None:
    data = bytearray(sample())
    data[30] ^= 0x01

    with pytest.raises(CheckpointError, match="fails its CRC32"):
        decode(bytes(data))


def test_foreign_file_is_refused_by_its_magic() -> None:
    with pytest.raises(CheckpointError, match="bad magic"):
        decode(b"PK\x03\x04" + bytes(40))
