"""One contract suite for every KeyedStateBackend: heap and RocksDB (``state_backend_factory``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metricsflow.checkpointing.storage import FsCheckpointStorage
from metricsflow.errors import CheckpointError, SerializationError, StateError
from metricsflow.state import (
    ColumnarChunk,
    KeyedStateBackend,
    StateDescriptor,
)
from metricsflow.state.handles import KeyGroupStateHandle

from .conftest import BackendFactory

StorageFactory = Callable[[], FsCheckpointStorage]


def snapshot_and_restore(
    source: KeyedStateBackend,
    target: KeyedStateBackend,
    storage: FsCheckpointStorage,
    key_groups: list[int],
    checkpoint_id: int = 1,
    *,
    incremental: bool = True,
) -> list[KeyGroupStateHandle]:
    handles = source.snapshot(checkpoint_id, key_groups, storage, incremental=incremental).run()
    source.notify_checkpoint_complete(checkpoint_id)
    target.restore(handles, storage)
    return handles


def contents(backend: KeyedStateBackend, key_group: int, state: str) -> list[tuple[bytes, Any]]:
    return list(backend.scan(key_group, state))


def test_put_then_get_returns_the_value_and_delete_removes_it(
    state_backend_factory: BackendFactory,
) -> None:
    backend = state_backend_factory()
    backend.put(0, "windows", b"k", {"count": 3, "sum": 1.5})
    backend.put(0, "counts", b"k", 7)

    assert backend.get(0, "windows", b"k") == {"count": 3, "sum": 1.5}
    assert backend.get(0, "counts", b"k") == 7
    backend.delete(0, "windows", b"k")
    assert backend.get(0, "windows", b"k") is None
    assert backend.get(0, "counts", b"k") == 7


def test_put_replaces_the_previous_value(state_backend_factory: BackendFactory) -> None:
    backend = state_backend_factory()
    backend.put(3, "names", b"a", "first")
    backend.put(3, "names", b"a", "second")

    assert contents(backend, 3, "names") == [(b"a", "second")]


def test_get_delete_and_scan_of_missing_keys_are_harmless(
    state_backend_factory: BackendFactory,
) -> None:
    backend = state_backend_factory()
    backend.delete(9, "counts", b"nope")

    assert backend.get(9, "counts", b"nope") is None
    assert contents(backend, 9, "counts") == []
    assert backend.delete_range(9, "counts") == 0
    assert backend.key_groups() == frozenset()


def test_unregistered_state_is_refused(state_backend_factory: BackendFactory) -> None:
    backend = state_backend_factory()

    with pytest.raises(StateError, match="'nope' is not registered"):
        backend.put(0, "nope", b"k", 1)
    with pytest.raises(StateError, match="'nope' is not registered"):
        backend.get(0, "nope", b"k")


def test_none_values_are_refused(state_backend_factory: BackendFactory) -> None:
    backend = state_backend_factory()

    with pytest.raises(StateError, match="cannot hold None"):
        backend.put(0, "windows", b"k", None)


def test_scan_yields_entries_in_ascending_key_order_within_bounds(
    state_backend_factory: BackendFactory,
) -> None:
    backend = state_backend_factory()
    keys = [b"\x00\x05", b"\x00\x01", b"\xff", b"\x00\x03", b"\x01", b"\x00\x03\x00"]
    for i, key in enumerate(keys):
        backend.put(1, "counts", key, i)

    assert [k for k, _ in backend.scan(1, "counts")] == sorted(keys)
    assert list(backend.scan(1, "counts", b"\x00\x03", b"\x01")) == [
        (b"\x00\x03", 3),
        (b"\x00\x03\x00", 5),
        (b"\x00\x05", 0),
    ]
    assert [k for k, _ in backend.scan(1, "counts", start=b"\x01")] == [b"\x01", b"\xff"]
    assert [k for k, _ in backend.scan(1, "counts", stop=b"\x00\x03")] == [b"\x00\x01"]
    assert list(backend.scan(1, "counts", b"\x02", b"\x01")) == []


def test_scan_sees_keys_added_and_deleted_between_scans(
    state_backend_factory: BackendFactory,
) -> None:
    backend = state_backend_factory()
    for i in range(0, 20, 2):
        backend.put(0, "counts", bytes([i]), i)
    assert len(contents(backend, 0, "counts")) == 10
    backend.put(0, "counts", bytes([5]), 5)
    backend.delete(0, "counts", bytes([4]))
    backend.put(0, "counts", bytes([30]), 30)
    backend.delete(0, "counts", bytes([30]))
    backend.put(0, "counts", bytes([4]), 44)

    assert contents(backend, 0, "counts") == [
        (bytes([i]), 44 if i == 4 else i) for i in (0, 2, 4, 5, 6, 8, 10, 12, 14, 16, 18)
    ]


def test_delete_range_removes_only_the_keys_in_range_and_counts_them(
    state_backend_factory: BackendFactory,
) -> None:
    backend = state_backend_factory()
    for i in range(10):
        backend.put(2, "counts", bytes([i]), i)

    assert backend.delete_range(2, "counts", bytes([3]), bytes([6])) == 3
    assert [v for _, v in contents(backend, 2, "counts")] == [0, 1, 2, 6, 7, 8, 9]
    assert backend.delete_range(2, "counts", stop=bytes([2])) == 2
    assert backend.delete_range(2, "counts", start=bytes([8])) == 2
    assert [v for _, v in contents(backend, 2, "counts")] == [2, 6, 7]
    assert backend.delete_range(2, "counts") == 3
    assert contents(backend, 2, "counts") == []


def test_delete_range_of_many_keys_uses_the_same_semantics(
    state_backend_factory: BackendFactory,
) -> None:
    backend = state_backend_factory()
    for i in range(3000):
        backend.put(0, "counts", i.to_bytes(4, "big"), i)

    assert backend.delete_range(0, "counts", (100).to_bytes(4, "big")) == 2900
    assert [v for _, v in contents(backend, 0, "counts")] == list(range(100))


def test_key_groups_are_isolated_from_each_other(state_backend_factory: BackendFactory) -> None:
    backend = state_backend_factory()
    backend.put(0, "counts", b"k", 0)
    backend.put(1, "counts", b"k", 1)
    backend.delete_range(1, "counts")
    backend.put(1, "counts", b"other", 11)

    assert backend.get(0, "counts", b"k") == 0
    assert contents(backend, 1, "counts") == [(b"other", 11)]
    assert backend.key_groups() == frozenset({0, 1})


def test_drop_key_group_forgets_only_that_key_group(state_backend_factory: BackendFactory) -> None:
    backend = state_backend_factory()
    for kg in range(3):
        backend.put(kg, "names", b"k", f"kg{kg}")
    backend.drop_key_group(1)

    assert backend.key_groups() == frozenset({0, 2})
    assert backend.get(1, "names", b"k") is None
    assert backend.get(2, "names", b"k") == "kg2"
    backend.put(1, "names", b"k", "again")
    assert backend.get(1, "names", b"k") == "again"


def test_size_bytes_grows_with_the_state(state_backend_factory: BackendFactory) -> None:
    backend = state_backend_factory()
    empty = backend.size_bytes()
    for i in range(2000):
        backend.put(0, "windows", i.to_bytes(4, "big"), {"sum": float(i), "n": i})

    assert backend.size_bytes() > empty
    assert backend.size_bytes(0) > 0
    assert backend.size_bytes(5) == 0


@pytest.mark.parametrize("incremental", [True, False], ids=["incremental", "full"])
def test_snapshot_then_restore_into_a_fresh_backend_round_trips(
    state_backend_factory: BackendFactory, storage_factory: StorageFactory, incremental: bool
) -> None:
    source = state_backend_factory()
    chunk = ColumnarChunk(
        {
            "key_idx": np.array([0, 1, 0], np.int32),
            "ts_ns": np.arange(3, dtype=np.int64),
            "values": np.array([1.5, np.nan, -2.0]),
        },
        keys=("cpu,host=a", "cpu,host=b"),
    )
    for kg in (0, 7):
        source.put(kg, "windows", b"w1", {"count": kg, "tags": ["a", "b"]})
        source.put(kg, "counts", b"c", -(2**63))
        source.put(kg, "names", "ключ".encode(), "значение")
        source.put(kg, "chunks", b"chunk", chunk)
    target = state_backend_factory()

    handles = snapshot_and_restore(
        source, target, storage_factory(), [0, 7], incremental=incremental
    )

    assert [h.key_group for h in handles] == [0, 7]
    for kg in (0, 7):
        for state in ("windows", "counts", "names", "chunks"):
            assert contents(target, kg, state) == contents(source, kg, state)
    assert target.get(7, "chunks", b"chunk") == chunk
    assert target.key_groups() == frozenset({0, 7})


def test_snapshot_of_an_empty_key_group_restores_an_empty_key_group(
    state_backend_factory: BackendFactory, storage_factory: StorageFactory
) -> None:
    source = state_backend_factory()
    target = state_backend_factory()
    target.put(4, "counts", b"stale", 1)

    handles = snapshot_and_restore(source, target, storage_factory(), [4])

    assert len(handles) == 1
    assert contents(target, 4, "counts") == []


def test_mutations_after_the_synchronous_part_do_not_leak_into_the_snapshot(
    state_backend_factory: BackendFactory, storage_factory: StorageFactory
) -> None:
    backend = state_backend_factory()
    for i in range(100):
        backend.put(0, "counts", bytes([i]), i)
    storage = storage_factory()

    pending = backend.snapshot(1, [0], storage)
    backend.put(0, "counts", bytes([0]), 1000)
    backend.put(0, "counts", b"\xff\xff", 1)
    backend.delete(0, "counts", bytes([1]))
    backend.delete_range(0, "counts", bytes([50]))
    handles = pending.run()
    restored = state_backend_factory()
    restored.restore(handles, storage)

    assert contents(restored, 0, "counts") == [(bytes([i]), i) for i in range(100)]
    assert contents(backend, 0, "counts")[:2] == [(bytes([0]), 1000), (bytes([2]), 2)]


def test_restore_of_some_key_groups_leaves_the_others_alone(
    state_backend_factory: BackendFactory, storage_factory: StorageFactory
) -> None:
    source = state_backend_factory()
    for kg in range(4):
        source.put(kg, "names", b"k", f"from-checkpoint-{kg}")
    storage = storage_factory()
    handles = source.snapshot(1, range(4), storage).run()
    target = state_backend_factory()
    for kg in range(4):
        target.put(kg, "names", b"k", f"live-{kg}")

    target.restore([h for h in handles if h.key_group in (1, 3)], storage)

    assert [target.get(kg, "names", b"k") for kg in range(4)] == [
        "live-0",
        "from-checkpoint-1",
        "live-2",
        "from-checkpoint-3",
    ]


def test_corrupt_snapshot_file_is_detected_on_restore(
    state_backend_factory: BackendFactory, storage_factory: StorageFactory
) -> None:
    source = state_backend_factory()
    source.put(0, "names", b"k", "value")
    storage = storage_factory()
    handles = source.snapshot(1, [0], storage).run()
    victim = (*handles[0].private, *handles[0].shared)[-1]  # heap: a shared segment file
    full = storage._full(victim.path)
    with open(full, "r+b") as f:
        f.seek(victim.size // 2)
        byte = f.read(1)
        f.seek(victim.size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))

    with pytest.raises(CheckpointError, match="SHA-256"):
        state_backend_factory().restore(handles, storage)


def test_restore_refuses_a_state_that_is_not_registered(
    state_backend_factory: BackendFactory, storage_factory: StorageFactory
) -> None:
    source = state_backend_factory()
    source.put(0, "names", b"k", "value")
    storage = storage_factory()
    handles = source.snapshot(1, [0], storage).run()
    target = state_backend_factory(register=False)

    with pytest.raises(StateError, match="'names', which is not registered"):
        target.restore(handles, storage)


@dataclass(frozen=True)
class TemperatureSerializer:
    """v1 wrote Celsius as text; v2 writes Kelvin as text; v2 reads both."""

    version: int
    type_id: str = "test-temperature"

    def serialize(self, value: float) -> bytes:
        return repr(value if self.version == 1 else value + 273.0).encode()

    def deserialize(self, data: bytes, version: int) -> float:
        if version not in (1, 2):
            raise SerializationError(f"unknown version {version!r}")
        number = float(data.decode())
        return number if version == 1 else number - 273.0


@pytest.mark.parametrize("incremental", [True, False], ids=["incremental", "full"])
def test_serializer_version_is_recorded_and_read_back(
    state_backend_factory: BackendFactory, storage_factory: StorageFactory, incremental: bool
) -> None:
    old = state_backend_factory(register=False)
    old.register(StateDescriptor("temp", TemperatureSerializer(version=1)))
    old.put(0, "temp", b"room", 21.0)
    new = state_backend_factory(register=False)
    v2 = TemperatureSerializer(version=2)
    new.register(StateDescriptor("temp", v2))

    handles = snapshot_and_restore(old, new, storage_factory(), [0], incremental=incremental)

    assert new.get(0, "temp", b"room") == 21.0
    if handles[0].metadata.get("kind") == "full":
        assert '"temp": ["test-temperature", 1]' in handles[0].metadata["serializers"]
    new.put(0, "temp", b"room", 22.0)
    assert new.get(0, "temp", b"room") == 22.0


def test_restore_refuses_a_state_registered_with_another_serializer(
    state_backend_factory: BackendFactory, storage_factory: StorageFactory
) -> None:
    source = state_backend_factory()
    source.put(0, "counts", b"k", 1)
    storage = storage_factory()
    handles = source.snapshot(1, [0], storage).run()
    target = state_backend_factory(register=False)
    target.register(StateDescriptor("counts", TemperatureSerializer(version=1)))

    with pytest.raises(StateError, match="written with serializer 'int64'"):
        target.restore(handles, storage)


def test_restore_refuses_a_handle_for_another_key_group(
    state_backend_factory: BackendFactory, storage_factory: StorageFactory
) -> None:
    source = state_backend_factory()
    source.put(0, "counts", b"k", 1)
    storage = storage_factory()
    handle = source.snapshot(1, [0], storage, incremental=False).run()[0]

    with pytest.raises(StateError, match="holds key group 0, the handle says 5"):
        state_backend_factory().restore([replace(handle, key_group=5)], storage)


# -- property: the backend behaves like a dict of sorted dicts ----------------------------
KEY_GROUPS = st.integers(0, 2)
KEYS = st.binary(min_size=0, max_size=2)
OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), KEY_GROUPS, KEYS, st.integers(-(2**63), 2**63 - 1)),
        st.tuples(st.just("delete"), KEY_GROUPS, KEYS),
        st.tuples(st.just("delete_range"), KEY_GROUPS, st.none() | KEYS, st.none() | KEYS),
        st.tuples(st.just("drop"), KEY_GROUPS),
        st.tuples(st.just("scan"), KEY_GROUPS, st.none() | KEYS, st.none() | KEYS),
        st.tuples(st.just("snapshot_restore"), st.booleans()),
    ),
    max_size=40,
)


def in_range(key: bytes, start: bytes | None, stop: bytes | None) -> bool:
    return (start is None or key >= start) and (stop is None or key < stop)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(operations=OPERATIONS)
def test_random_operations_match_a_dict_model_across_snapshot_and_restore(
    state_backend_factory: BackendFactory, storage_factory: StorageFactory, operations: list[Any]
) -> None:
    backend = state_backend_factory()
    model: dict[int, dict[bytes, int]] = {0: {}, 1: {}, 2: {}}
    checkpoint_id = 0
    for op in operations:
        match op:
            case ("put", kg, key, value):
                backend.put(kg, "counts", key, value)
                model[kg][key] = value
            case ("delete", kg, key):
                backend.delete(kg, "counts", key)
                model[kg].pop(key, None)
            case ("delete_range", kg, start, stop):
                doomed = [k for k in model[kg] if in_range(k, start, stop)]
                assert backend.delete_range(kg, "counts", start, stop) == len(doomed)
                for key in doomed:
                    del model[kg][key]
            case ("drop", kg):
                backend.drop_key_group(kg)
                model[kg] = {}
            case ("scan", kg, start, stop):
                in_bounds = sorted((k, v) for k, v in model[kg].items() if in_range(k, start, stop))
                assert list(backend.scan(kg, "counts", start, stop)) == in_bounds
            case ("snapshot_restore", incremental):
                checkpoint_id += 1
                fresh = state_backend_factory()
                snapshot_and_restore(
                    backend,
                    fresh,
                    storage_factory(),
                    [0, 1, 2],
                    checkpoint_id,
                    incremental=incremental,
                )
                backend.close()
                backend = fresh
    for kg, expected in model.items():
        assert contents(backend, kg, "counts") == sorted(expected.items())
        for key, value in expected.items():
            assert backend.get(kg, "counts", key) == value
    assert backend.key_groups() == frozenset(kg for kg, m in model.items() if m)
    backend.close()
