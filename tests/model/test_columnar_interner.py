"""decode_columnar with a persistent KeyInterner: stable ids across records."""

from __future__ import annotations

from metricsflow.model.columnar import KeyInterner, decode_columnar


def test_ids_are_stable_across_records_and_the_columns_are_unchanged() -> None:
    interner = KeyInterner()
    a = decode_columnar(b"cpu,host=a u=1,v=2i 10\ncpu,host=b u=3u 10", interner)
    b = decode_columnar(b"cpu,host=b u=4 20\nmem,host=a x=1 20\ncpu,host=a v=5 20", interner)
    assert a.series_keys is interner.series_keys is b.series_keys
    assert interner.series_keys == ["cpu,host=a", "cpu,host=b", "mem,host=a"]
    assert interner.field_keys == ["u", "v", "x"]
    assert b.series_idx.tolist() == [1, 2, 0]
    assert b.field_idx.tolist() == [0, 2, 1]
    raw_a = b"cpu,host=a u=1,v=2i 10\ncpu,host=b u=3u 10"
    raw_b = b"cpu,host=b u=4 20\nmem,host=a x=1 20\ncpu,host=a v=5 20"
    for chunk, raw in ((a, raw_a), (b, raw_b)):
        plain = decode_columnar(raw)
        assert [chunk.series_keys[i] for i in chunk.series_idx.tolist()] == [
            plain.series_keys[i] for i in plain.series_idx.tolist()
        ]
        assert [chunk.field_keys[i] for i in chunk.field_idx.tolist()] == [
            plain.field_keys[i] for i in plain.field_idx.tolist()
        ]
        assert chunk.values.tolist() == plain.values.tolist()
        assert chunk.kinds.tolist() == plain.kinds.tolist()
        assert chunk.time_ns.tolist() == plain.time_ns.tolist()


def test_the_slow_path_and_non_canonical_tags_share_the_interner() -> None:
    interner = KeyInterner()
    decode_columnar(b"cpu,host=a u=1 1", interner)
    slow = decode_columnar(b'cpu,host=a u=2,s="x" 2\ncpu,z=1,host=a u=3 3', interner)
    fast = decode_columnar(b"cpu,z=1,host=a u=3 3", interner)
    assert slow.series_idx.tolist() == [0, 1]
    assert fast.series_idx.tolist() == [1]
    assert interner.series_keys == ["cpu,host=a", "cpu,host=a,z=1"]
    assert slow.non_numeric == 1


def test_without_an_interner_each_record_has_its_own_keys() -> None:
    a = decode_columnar(b"cpu,host=a u=1 1")
    b = decode_columnar(b"cpu,host=b u=1 1")
    assert a.series_keys == ["cpu,host=a"]
    assert b.series_keys == ["cpu,host=b"]
