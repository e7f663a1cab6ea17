"""Incremental heap checkpoints: copy-on-write key-range segments, shared across checkpoints.

Each (key group, state) map is cut into **segments**: contiguous key ranges of about
``segment_bytes`` serialized bytes. An incremental checkpoint writes **one new file** per
(backend owner, key group), ``shared/chk-<n>/<owner>-kg-<k>.mfks`` in the canonical snapshot
format (``snapshot_format``), holding one section per *changed* segment; unchanged segments
are referenced in the file an earlier checkpoint wrote them to. The handle's ``shared`` lists
every file the checkpoint needs (reference-counted by ``SharedStateRegistry`` exactly like
RocksDB's SST files), ``metadata["segments"]`` the (file, section) of every segment in key
order per state. Restore reads each referenced file once and concatenates the sections.

Which segments changed: the map records the keys written or deleted since the last snapshot
(``_SortedMap.touched``); a segment is rewritten when one of those keys falls into its range.
The base of a snapshot is the layout of the backend's last *completed* checkpoint (as for
RocksDB), so the keys touched since then (over every snapshot taken in between) count.

A referenced file keeps its dead sections (segments rewritten later) alive. **Compaction**: an
earlier file whose still-referenced segments are less than ``MIN_LIVE_FRACTION`` (2/3) of its
bytes has them rewritten into the new file, so it is no longer referenced; a checkpoint thus
references at most 1.5 times the live state plus what it wrote, and restore reads no more
than that. A safety net rewrites everything when dead bytes still exceed ``DEAD_RATIO`` of
what the checkpoint references (plus a small slack).

New files of checkpoint *n* live under ``shared/chk-<n>/``: an aborted checkpoint's files are
deleted with that directory (no completed checkpoint can reference them: bases are only ever
completed checkpoints), and a crashed process's leftovers are swept at the next start
(``CheckpointCoordinator.remove_unreferenced_shared_files``).
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from metricsflow.errors import StateError
from metricsflow.state import snapshot_format
from metricsflow.state.handles import CheckpointStorage, KeyGroupStateHandle, StreamStateHandle

KIND = "segments"
SEGMENT_FORMAT_VERSION = 1
DEFAULT_SEGMENT_BYTES = 32 << 10
#: an earlier file whose segments still referenced are less than this share of its bytes has
#: them rewritten into the new file (so it is no longer referenced)
MIN_LIVE_FRACTION = 2 / 3
#: compact (rewrite everything) when dead bytes exceed this share of the referenced bytes
DEAD_RATIO = 0.5
#: dead bytes tolerated whatever the ratio (tiny states are not compacted every checkpoint)
DEAD_SLACK_BYTES = 256 << 10
_ENTRY_OVERHEAD = 8  # two u32 lengths per entry in the snapshot format


@dataclass(frozen=True, slots=True)
class Segment:
    """One key range's entries as written: ``lo`` is its first boundary (``None`` = from the
    start; it ends where the next segment begins), ``section`` its index in ``path``."""

    lo: bytes | None
    path: str
    section: int
    size: int


@dataclass(frozen=True, slots=True)
class Layout:
    """Every segment of one key group (by state, in key order) and the files they are in."""

    states: dict[str, tuple[Segment, ...]]
    files: dict[str, StreamStateHandle]

    def live_bytes(self) -> int:
        return sum(s.size for segs in self.states.values() for s in segs)

    def referenced_bytes(self) -> int:
        return sum(f.size for f in self.files.values())


def segment_file_path(checkpoint_id: int, owner: str, key_group: int) -> str:
    return f"shared/chk-{checkpoint_id}/{owner}-kg-{key_group}.mfks"


@dataclass(slots=True)
class _Piece:
    state: str
    lo: bytes | None
    entries: list[tuple[bytes, bytes]]
    size: int


def _cut(
    state: str,
    lo: bytes | None,
    entries: list[tuple[bytes, bytes]],
    sizes: list[int],
    target: int,
) -> list[_Piece]:
    """Split one range's serialized entries into pieces of about ``target`` bytes (a range
    up to twice the target stays whole)."""
    total = sum(sizes)
    if total <= 2 * target:
        return [_Piece(state, lo, entries, total)] if entries else []
    pieces: list[_Piece] = []
    start, acc = 0, 0
    for i, size in enumerate(sizes):
        acc += size
        if acc >= target and i + 1 < len(entries):
            first = lo if not pieces else entries[start][0]
            pieces.append(_Piece(state, first, entries[start : i + 1], acc))
            start, acc = i + 1, 0
    if start < len(entries):
        first = lo if not pieces else entries[start][0]
        pieces.append(_Piece(state, first, entries[start:], acc))
    return pieces


class StateView:
    """What the snapshot captured of one map: its dict, and its ordered key list (which may
    hold deleted keys), computed on first use off the processing thread."""

    def __init__(self, data: dict[bytes, Any], ordered: Callable[[], list[bytes]]) -> None:
        self.data = data
        self._ordered = ordered
        self._keys: list[bytes] | None = None

    def serialized(
        self, serialize: Callable[[Any], bytes], lo: bytes | None, hi: bytes | None
    ) -> tuple[list[tuple[bytes, bytes]], list[int]]:
        keys = self._keys
        if keys is None:
            keys = self._keys = self._ordered()
        start = 0 if lo is None else bisect.bisect_left(keys, lo)
        stop = len(keys) if hi is None else bisect.bisect_left(keys, hi)
        data = self.data
        entries: list[tuple[bytes, bytes]] = []
        sizes: list[int] = []
        for i in range(start, stop):
            key = keys[i]
            if key in data:
                value = serialize(data[key])
                entries.append((key, value))
                sizes.append(len(key) + len(value) + _ENTRY_OVERHEAD)
        return entries, sizes


@dataclass(frozen=True, slots=True)
class CapturedState:
    """One state of a key group for an incremental snapshot: its view, serializer, and the
    keys touched since the base (``None``: unknown, rewrite it all)."""

    name: str
    type_id: str
    serializer_version: int
    serialize: Callable[[Any], bytes]
    view: StateView
    touched: tuple[set[bytes], ...] | None


@dataclass(frozen=True, slots=True)
class SegmentWrite:
    """The outcome of one key group's incremental snapshot."""

    handle: KeyGroupStateHandle
    layout: Layout
    written_bytes: int
    compacted: bool


def _dirty_indexes(segments: Sequence[Segment], touched: Iterable[set[bytes]]) -> set[int]:
    bounds: list[bytes] = [s.lo for s in segments[1:] if s.lo is not None]
    if not bounds:
        return {0} if any(touched) else set()
    right = bisect.bisect_right
    return {right(bounds, key) for keys in touched for key in keys}


def _plan(
    states: Sequence[CapturedState],
    base: Layout | None,
    target: int,
    *,
    full: bool,
    sparse: Collection[str] = (),
) -> list[tuple[str, list[Segment | _Piece]]]:
    """Per state, in key order: base segments kept as they are, or new pieces (segments
    that changed, and those in a ``sparse`` file, which are moved out of it)."""
    plan: list[tuple[str, list[Segment | _Piece]]] = []
    for st in states:
        old = None if full or base is None else base.states.get(st.name)
        if old is None or st.touched is None or not old:
            entries, sizes = st.view.serialized(st.serialize, None, None)
            plan.append((st.name, list(_cut(st.name, None, entries, sizes, target))))
            continue
        dirty = _dirty_indexes(old, st.touched)
        out: list[Segment | _Piece] = []
        for i, seg in enumerate(old):
            if i not in dirty and seg.path not in sparse:
                out.append(seg)
                continue
            hi = old[i + 1].lo if i + 1 < len(old) else None
            lo = None if i == 0 else seg.lo
            entries, sizes = st.view.serialized(st.serialize, lo, hi)
            out.extend(_cut(st.name, lo, entries, sizes, target))
        plan.append((st.name, out))
    return plan


def write_segments(
    *,
    backend: str,
    owner: str,
    key_group: int,
    checkpoint_id: int,
    states: Sequence[CapturedState],
    base: Layout | None,
    storage: CheckpointStorage,
    segment_bytes: int = DEFAULT_SEGMENT_BYTES,
) -> SegmentWrite:
    """Write the changed segments of one key group and return its handle and new layout."""
    plan = _plan(states, base, segment_bytes, full=False)
    compacted = base is None
    if base is not None:
        live_in: dict[str, int] = {}
        for _, items in plan:
            for x in items:
                if isinstance(x, Segment):
                    live_in[x.path] = live_in.get(x.path, 0) + x.size
        sparse = {p for p, n in live_in.items() if n < MIN_LIVE_FRACTION * base.files[p].size}
        if sparse:  # move the live segments out of mostly dead files
            plan = _plan(states, base, segment_bytes, full=False, sparse=sparse)
        live = sum(x.size for _, items in plan for x in items)  # kept segments and new pieces alike
        kept_files = {x.path for _, items in plan for x in items if isinstance(x, Segment)}
        referenced = sum(base.files[p].size for p in kept_files) + sum(
            x.size for _, items in plan for x in items if isinstance(x, _Piece)
        )
        if referenced - live > DEAD_RATIO * referenced + DEAD_SLACK_BYTES:
            plan = _plan(states, base, segment_bytes, full=True)
            compacted = True
    path = segment_file_path(checkpoint_id, owner, key_group)
    versions = {s.name: (s.type_id, s.serializer_version) for s in states}
    sections: list[snapshot_format.StateSection] = []
    layout_states: dict[str, tuple[Segment, ...]] = {}
    files: dict[str, StreamStateHandle] = {}
    for name, items in plan:
        segs: list[Segment] = []
        for x in items:
            if isinstance(x, _Piece):
                type_id, version = versions[name]
                segs.append(Segment(x.lo, path, len(sections), x.size))
                sections.append(snapshot_format.StateSection(name, type_id, version, x.entries))
            else:
                segs.append(x)
                assert base is not None
                files[x.path] = base.files[x.path]
        if segs:  # the first segment covers everything before its successor's boundary
            segs[0] = Segment(None, segs[0].path, segs[0].section, segs[0].size)
            layout_states[name] = tuple(segs)
    written = 0
    if sections:
        blob = snapshot_format.encode(key_group, checkpoint_id, backend, sections)
        files[path] = storage.write_file(path, blob)
        written = len(blob)
    layout = Layout(layout_states, files)
    serializers = {s.name: [s.type_id, s.serializer_version] for s in states}
    handle = KeyGroupStateHandle(
        key_group=key_group,
        backend=backend,
        format_version=SEGMENT_FORMAT_VERSION,
        shared=tuple(files[p] for p in sorted(files)),
        metadata={
            "kind": KIND,
            "serializers": json.dumps(serializers, sort_keys=True),
            "segments": json.dumps(
                {
                    name: [[s.path, s.section] for s in segs]
                    for name, segs in sorted(layout_states.items())
                },
                sort_keys=True,
            ),
            "written_bytes": str(written),
        },
    )
    return SegmentWrite(handle, layout, written, compacted)


def read_segment_sections(
    handle: KeyGroupStateHandle, storage: CheckpointStorage
) -> list[snapshot_format.StateSection]:
    """The sections of a segments handle, per state in key order (each segment keeps the
    serializer version it was written with)."""
    if handle.format_version != SEGMENT_FORMAT_VERSION:
        raise StateError(
            f"key group {handle.key_group} heap segment format {handle.format_version!r} is "
            f"not supported (reads {SEGMENT_FORMAT_VERSION!r})"
        )
    try:
        layout: dict[str, list[list[Any]]] = json.loads(handle.metadata["segments"])
    except (KeyError, ValueError) as exc:
        raise StateError(
            f"key group {handle.key_group} segments handle has no readable layout: {exc!r}"
        ) from exc
    by_path = {h.path: h for h in handle.shared}
    decoded: dict[str, snapshot_format.KeyGroupSnapshot] = {}
    out: list[snapshot_format.StateSection] = []
    for name in sorted(layout):
        for path, index in layout[name]:
            file_handle = by_path.get(path)
            if file_handle is None:
                raise StateError(
                    f"key group {handle.key_group} segment of state {name!r} is in {path!r}, "
                    "which the handle does not list"
                )
            snap = decoded.get(path)
            if snap is None:
                snap = decoded[path] = snapshot_format.decode(
                    storage.read_file(file_handle), source=path
                )
                if snap.key_group != handle.key_group:
                    raise StateError(
                        f"segment file {path!r} holds key group {snap.key_group}, "
                        f"the handle says {handle.key_group}"
                    )
            if not 0 <= index < len(snap.states) or snap.states[index].name != name:
                raise StateError(f"segment file {path!r} has no section {index} of state {name!r}")
            out.append(snap.states[index])
    return out
