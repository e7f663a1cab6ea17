"""``metricsflow infra`` end to end, as ``make run`` uses it: real servers, real signals."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from metricsflow.infra.process import pid_alive, read_pid_file

pytestmark = [pytest.mark.integration, pytest.mark.slow]

METRICSFLOW = str(Path(sys.executable).with_name("metricsflow"))


def _infra(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [METRICSFLOW, "infra", *args], env=env, capture_output=True, text=True, timeout=180
    )


def _pid_files(env: dict[str, str]) -> list[Path]:
    run = Path(env["METRICSFLOW_INFRA_DIR"])
    return [run / "kafka" / "kafka.pid", run / "influxdb" / "influxdb.pid"]


def test_infra_up_twice_starts_nothing_the_second_time_and_down_stops_everything(
    infra_env: dict[str, str],
) -> None:
    first = _infra(infra_env, "up")
    assert first.returncode == 0, first.stderr
    kafka = infra_env["METRICSFLOW_KAFKA_PORT"]
    influx = infra_env["METRICSFLOW_INFLUXDB_PORT"]
    ready = f"metricsflow ready kafka=127.0.0.1:{kafka} influxdb=http://127.0.0.1:{influx}"
    assert ready in first.stdout
    records = [read_pid_file(p) for p in _pid_files(infra_env)]
    assert all(r is not None and pid_alive(r) for r in records)

    second = _infra(infra_env, "up")
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("already running") == 2
    assert [read_pid_file(p) for p in _pid_files(infra_env)] == records

    status = _infra(infra_env, "status")
    assert status.returncode == 0
    assert status.stdout.count(": healthy") == 2

    down = _infra(infra_env, "down")
    assert down.returncode == 0, down.stderr
    assert all(r is not None and not pid_alive(r) for r in records)
    assert not any(p.exists() for p in _pid_files(infra_env))
    assert _infra(infra_env, "status").returncode == 1


def test_foreground_prints_the_ready_line_and_ctrl_c_stops_everything_it_started(
    infra_env: dict[str, str],
) -> None:
    proc = subprocess.Popen(
        [METRICSFLOW, "infra", "run"],
        env=infra_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until ready (or exit)
        assert line.startswith("metricsflow ready kafka=127.0.0.1:"), line
        assert " influxdb=http://127.0.0.1:" in line
        records = [read_pid_file(p) for p in _pid_files(infra_env)]
        assert all(r is not None and pid_alive(r) for r in records)

        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        assert time.monotonic() - started < 30
        assert all(r is not None and not pid_alive(r) for r in records)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
