"""Dead-letter and late-points files rotate by size and keep a bounded number of files."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from metricsflow.errors import ConfigurationError
from metricsflow.sinks.deadletter import DeadLetterFile, RotatingJsonlFile, read_dead_letters


def test_files_rotate_by_size_and_only_the_newest_are_kept(tmp_path: Path) -> None:
    f = RotatingJsonlFile(tmp_path, "late", max_bytes=1000, max_files=3, fsync=False)
    rows = [orjson.dumps({"i": i, "pad": "x" * 80}) + b"\n" for i in range(100)]
    for row in rows:
        f.append(row)
    files = f.files()
    assert len(files) == 3
    assert f.path == files[-1]
    assert all(p.stat().st_size <= 1000 for p in files)
    kept = [orjson.loads(line)["i"] for p in files for line in p.read_bytes().splitlines()]
    assert kept == list(range(100 - len(kept), 100)), "the newest rows, in order, none twice"
    assert f.rotations >= 9


def test_an_earlier_processes_files_count_against_the_limit(tmp_path: Path) -> None:
    for n in range(5):
        (tmp_path / f"influxdb-{n}.jsonl").write_bytes(b"{}\n")
    dead = DeadLetterFile(tmp_path, max_bytes=200, max_files=2)
    for _ in range(10):
        dead.write(
            db="d", rp="raw", reason="rejected", status=400, error="e" * 50, lines=[b"m v=1"]
        )
    assert len(list(tmp_path.glob("influxdb-*.jsonl"))) == 2
    assert read_dead_letters(tmp_path)[-1]["reason"] == "rejected"


def test_bad_limits_are_refused_with_their_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="max_files=0"):
        RotatingJsonlFile(tmp_path, "late", max_bytes=10, max_files=0)
