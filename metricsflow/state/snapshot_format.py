"""The canonical keyed-state snapshot file: one file per (backend owner, key group, checkpoint).

Both backends write it for full snapshots (and savepoints) and both read it, so a savepoint
taken with one backend can be restored into the other. All integers little-endian:

    header   magic b"MFKS" | u16 format version | u32 key group | u64 checkpoint id
             | u8 len + backend name (ASCII) | u32 state count
    state    u16 len + state name (UTF-8) | u8 len + serializer type_id (ASCII)
             | u32 serializer version | u64 entry count
             | entries: u32 key length, key bytes, u32 value length, value bytes
             (entries in ascending key order)
    footer   u32 CRC32 of everything before it | magic b"MFKE"

A truncated or corrupt file raises ``CheckpointError`` naming what is wrong; checkpoint
storage's SHA-256 verification catches corruption before this format is even parsed.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from metricsflow.errors import CheckpointError

MAGIC = b"MFKS"
FOOTER_MAGIC = b"MFKE"
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)

_HEAD = struct.Struct("<4sHIQ")
_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_STATE_TAIL = struct.Struct("<IQ")
_FOOTER = struct.Struct("<I4s")


@dataclass(frozen=True, slots=True)
class StateSection:
    """One state's entries as written: serialized values plus what serializer wrote them."""

    name: str
    type_id: str
    serializer_version: int
    entries: Sequence[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class KeyGroupSnapshot:
    """The decoded content of one snapshot file."""

    format_version: int
    key_group: int
    checkpoint_id: int
    backend: str
    states: tuple[StateSection, ...]


def encode(
    key_group: int, checkpoint_id: int, backend: str, states: Iterable[StateSection]
) -> bytes:
    """Encode a key group's states into the canonical snapshot format."""
    sections = list(states)
    backend_b = backend.encode("ascii")
    parts: list[bytes] = [
        _HEAD.pack(MAGIC, FORMAT_VERSION, key_group, checkpoint_id),
        _U8.pack(len(backend_b)),
        backend_b,
        _U32.pack(len(sections)),
    ]
    u32 = _U32.pack
    for section in sections:
        name_b = section.name.encode("utf-8")
        type_b = section.type_id.encode("ascii")
        parts += [_U16.pack(len(name_b)), name_b, _U8.pack(len(type_b)), type_b]
        parts.append(_STATE_TAIL.pack(section.serializer_version, len(section.entries)))
        for key, value in section.entries:
            parts += [u32(len(key)), key, u32(len(value)), value]
    body = b"".join(parts)
    return body + _FOOTER.pack(zlib.crc32(body), FOOTER_MAGIC)


def decode(data: bytes, *, source: str = "<bytes>") -> KeyGroupSnapshot:
    """Decode and verify a snapshot file; ``source`` names it in error messages."""
    minimum = _HEAD.size + _U8.size + _U32.size + _FOOTER.size
    if len(data) < minimum:
        raise CheckpointError(
            f"state snapshot {source!r} is truncated: {len(data)} bytes, at least {minimum} needed"
        )
    magic = bytes(data[:4])
    if magic != MAGIC:
        raise CheckpointError(
            f"state snapshot {source!r} has a bad magic {magic!r}, want {MAGIC!r}"
        )
    crc, footer_magic = _FOOTER.unpack_from(data, len(data) - _FOOTER.size)
    if footer_magic != FOOTER_MAGIC:
        raise CheckpointError(
            f"state snapshot {source!r} is truncated: footer magic is {footer_magic!r}"
        )
    body = memoryview(data)[: len(data) - _FOOTER.size]
    actual = zlib.crc32(body)
    if actual != crc:
        raise CheckpointError(
            f"state snapshot {source!r} fails its CRC32: "
            f"stored {crc:#010x}, computed {actual:#010x}"
        )
    try:
        return _parse(body)
    except (struct.error, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"state snapshot {source!r} is malformed: {exc}") from exc


def _parse(body: memoryview) -> KeyGroupSnapshot:
    _, version, key_group, checkpoint_id = _HEAD.unpack_from(body, 0)
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise ValueError(
            f"format version {version!r} is not supported (this code reads "
            f"{SUPPORTED_FORMAT_VERSIONS!r})"
        )
    pos = _HEAD.size
    (backend_len,) = _U8.unpack_from(body, pos)
    pos += 1
    backend = bytes(body[pos : pos + backend_len]).decode("ascii")
    pos += backend_len
    (n_states,) = _U32.unpack_from(body, pos)
    pos += 4
    end = len(body)
    u32 = _U32.unpack_from
    raw = body.tobytes()
    sections: list[StateSection] = []
    for _ in range(n_states):
        (name_len,) = _U16.unpack_from(raw, pos)
        pos += 2
        name = raw[pos : pos + name_len].decode("utf-8")
        pos += name_len
        type_len = raw[pos]
        pos += 1
        type_id = raw[pos : pos + type_len].decode("ascii")
        pos += type_len
        ser_version, count = _STATE_TAIL.unpack_from(raw, pos)
        pos += _STATE_TAIL.size
        entries: list[tuple[bytes, bytes]] = []
        append = entries.append
        for _ in range(count):
            (klen,) = u32(raw, pos)
            pos += 4
            key = raw[pos : pos + klen]
            pos += klen
            (vlen,) = u32(raw, pos)
            pos += 4
            value = raw[pos : pos + vlen]
            pos += vlen
            if pos > end:
                raise ValueError(f"state {name!r} entry runs past the end of the file")
            append((key, value))
        sections.append(StateSection(name, type_id, ser_version, entries))
    if pos != end:
        raise ValueError(f"{end - pos} unexpected trailing bytes after the last state")
    return KeyGroupSnapshot(version, key_group, checkpoint_id, backend, tuple(sections))
