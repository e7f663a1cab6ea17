"""The append-only key dictionaries (metricsflow/windows/keys.py)."""

from __future__ import annotations

import numpy as np
import pytest

from metricsflow.model.columnar import decode_columnar
from metricsflow.runtime.records import window_key
from metricsflow.windows.keys import KeyDictionary, KeyMapping, KeyTuple, WindowKeyIndex


def test_key_dictionary_is_append_only_and_its_snapshot_is_cached_until_it_grows() -> None:
    d = KeyDictionary(["a", "b"])
    first: KeyTuple = d.keys
    assert tuple(first) == ("a", "b")
    assert d.keys is first
    assert d.ids(["b", "c", "a", "c"]).tolist() == [1, 2, 0, 2]
    grown: KeyTuple = d.keys
    assert tuple(grown) == ("a", "b", "c")
    assert grown is not first
    assert grown.extends(first)
    assert not first.extends(grown)
    assert d.keys_from(2) == ["c"]
    assert d.id_of("b") == 1
    assert d.key(2) == "c"
    assert d.ids([]).dtype == np.int32
    assert len(d.ids([])) == 0


def test_snapshots_of_different_dictionaries_never_extend_each_other() -> None:
    a, b = KeyDictionary(["x"]), KeyDictionary(["x", "y"])
    assert not b.keys.extends(a.keys)
    assert not b.keys.extends(("x",))  # a plain tuple has no lineage


def ids(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int32)


def test_key_mapping_maps_the_ids_a_batch_uses_once_per_lineage() -> None:
    source, target = KeyDictionary(["s0", "s1"]), KeyDictionary(["s1"])
    mapping = KeyMapping()
    t1 = source.keys
    assert mapping.map(t1, ids(1, 0, 1), target).tolist() == [0, 1, 0]
    assert len(target) == 2
    source.add(["s2", "s3"])
    target.add(["zz"])  # the target grows independently
    t2 = source.keys
    assert mapping.map(t2, ids(2, 0), target).tolist() == [3, 1]
    assert "s3" not in target  # never used: never looked up
    assert mapping.map(t1, ids(0), target).tolist() == [1]  # an older snapshot: a prefix
    assert mapping.map(t2, ids(), target).dtype == np.int32


def test_key_mapping_starts_over_when_either_side_changes_lineage() -> None:
    source, target = KeyDictionary(["a", "b", "c"]), KeyDictionary()
    mapping = KeyMapping()
    assert mapping.map(source.keys, ids(0, 1, 2), target).tolist() == [0, 1, 2]
    remap = target.compact(np.array([False, True, True]))
    assert remap.tolist() == [-1, 0, 1]
    assert tuple(target.keys) == ("b", "c")
    assert mapping.map(source.keys, ids(0, 2), target).tolist() == [2, 1]
    source.compact(np.array([False, False, True]))  # upstream: "c" is now id 0
    assert mapping.map(source.keys, ids(0), target).tolist() == [1]


def test_key_mapping_of_plain_tuples_maps_each_new_tuple_again() -> None:
    target, mapping = KeyDictionary(), KeyMapping()
    assert mapping.map(("a", "b"), ids(0, 1), target).tolist() == [0, 1]
    assert mapping.map(("c", "a"), ids(0, 1), target).tolist() == [2, 0]
    assert mapping.map(("a",), ids(0), target).tolist() == [0]


def test_a_key_tuple_is_a_tuple() -> None:
    t = KeyTuple(["a", "b"], object())
    assert isinstance(t, tuple)
    assert t == ("a", "b")
    assert t[1:] == ("b",)
    assert len(t) == 2


def test_window_key_index_gives_stable_ids_across_records_and_databases() -> None:
    index = WindowKeyIndex()
    r1 = decode_columnar(b"cpu,host=a u=1,v=2 10\ncpu,host=b u=3 10", index.interner)
    ids1 = index.ids("db1", r1)
    keys = index.keys
    assert [keys[i] for i in ids1.tolist()] == [
        window_key("db1", "cpu,host=a", "u"),
        window_key("db1", "cpu,host=a", "v"),
        window_key("db1", "cpu,host=b", "u"),
    ]
    # another record: same series in another order, a new field, an unsorted tag set
    r2 = decode_columnar(b"cpu,host=b u=5,w=1i 20\ncpu,host=a v=7 20", index.interner)
    ids2 = index.ids("db1", r2)
    assert ids2.tolist() == [ids1[2], len(keys), ids1[1]]
    assert index.keys.extends(keys)
    r3 = decode_columnar(b"cpu,z=1,host=a u=1 30\ncpu,host=a u=2 30", index.interner)
    ids3 = index.ids("db2", r3)
    assert [index.keys[i] for i in ids3.tolist()] == [
        window_key("db2", "cpu,host=a,z=1", "u"),
        window_key("db2", "cpu,host=a", "u"),
    ]
    assert len(index.ids("db1", decode_columnar(b"s b=true 1", index.interner))) == 0


def test_window_key_index_matches_a_per_record_dictionary_on_random_records() -> None:
    rng = np.random.default_rng(3)
    index, reference = WindowKeyIndex(), KeyDictionary()
    for r in range(40):
        lines = []
        for _ in range(int(rng.integers(1, 30))):
            s, f = int(rng.integers(0, 50)), int(rng.integers(0, 6))
            lines.append(f"m,host=h{s} f{f}={float(rng.normal())} {r}")
        db = f"db{int(rng.integers(0, 3))}"
        chunk = decode_columnar("\n".join(lines).encode(), index.interner)
        got = [index.keys[i] for i in index.ids(db, chunk).tolist()]
        plain = decode_columnar("\n".join(lines).encode())
        want = [
            window_key(db, plain.series_keys[s], plain.field_keys[f])
            for s, f in zip(plain.series_idx.tolist(), plain.field_idx.tolist(), strict=True)
        ]
        assert got == want
        reference.add(want)
    assert set(index.keys) == set(reference.keys)


@pytest.mark.parametrize("value", [b"cpu,host=a u=1 1\nbad line", b"cpu,a=1,a=2 u=1 1"])
def test_a_bad_record_with_an_interner_raises_and_leaves_ids_usable(value: bytes) -> None:
    index = WindowKeyIndex()
    with pytest.raises(Exception, match="line"):
        decode_columnar(value, index.interner)
    chunk = decode_columnar(b"cpu,host=a u=1 1", index.interner)
    assert [index.keys[i] for i in index.ids("d", chunk).tolist()] == [
        window_key("d", "cpu,host=a", "u")
    ]
