"""``make run``'s supervisor restarts a component that dies, with back-off, and says so.

The back-off schedule against a stand-in server and explicit times (pure logic); a real
``metricsflow infra run`` whose InfluxDB is SIGKILLed comes back by itself."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from metricsflow.errors import InfrastructureError
from metricsflow.infra.process import pid_alive, read_pid_file
from metricsflow.infra.stack import Supervisor


class StandIn:
    """What the supervisor uses of a ManagedServer."""

    name = "worker"
    address = "http://127.0.0.1:1"

    def __init__(self) -> None:
        self.running = True
        self.starts = 0
        self.fail_starts = 0

    def is_running(self) -> bool:
        return self.running

    def start(self) -> bool:
        self.starts += 1
        if self.fail_starts:
            self.fail_starts -= 1
            raise InfrastructureError("port busy")
        self.running = True
        return True

    def log_tail(self, lines: int = 30) -> str:
        return "Traceback: boom"


def test_a_dead_component_is_restarted_with_doubling_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = StandIn()
    supervisor = Supervisor([server], initial_backoff_s=1, max_backoff_s=4, stable_after_s=60)  # type: ignore[list-item]
    caplog.set_level(logging.WARNING)
    supervisor.check(0)
    server.running = False
    supervisor.check(10)  # noticed: restart due at 11
    assert "component exited name=worker restart_in_s=1.0" in caplog.text
    assert "Traceback: boom" in caplog.text
    supervisor.check(10.9)
    assert server.starts == 0
    server.fail_starts = 2
    supervisor.check(11)  # fails: next in 2 s
    supervisor.check(12.9)
    assert server.starts == 1
    supervisor.check(13)  # fails: next in 4 s
    supervisor.check(16.9)
    assert server.starts == 2
    supervisor.check(17)  # succeeds
    assert server.starts == 3
    assert server.running
    assert "component restart failed name=worker error=port busy restart_in_s=2.0" in caplog.text
    assert "component restarted name=worker" in caplog.text
    server.running = False  # dies again at once: the back-off stays at its cap
    supervisor.check(18)
    exits = [r.getMessage() for r in caplog.records if "component exited" in r.getMessage()]
    assert "restart_in_s=4.0 consecutive_failures=4" in exits[-1]


def test_the_backoff_resets_after_a_stable_period() -> None:
    server = StandIn()
    supervisor = Supervisor([server], initial_backoff_s=1, max_backoff_s=30, stable_after_s=5)  # type: ignore[list-item]
    for died_at in (0.0, 10.0, 20.0):
        server.running = False
        supervisor.check(died_at)
        supervisor.check(died_at + 9)  # restarted (back-off <= 8 s)
        assert server.running
    assert supervisor.restarts == {"worker": 3}
    supervisor.check(29)
    supervisor.check(35)  # stable for >= 5 s since it was last seen up
    server.running = False
    supervisor.check(36)
    supervisor.check(37)
    assert supervisor.restarts == {"worker": 4}  # 1 s again, not 8 s


METRICSFLOW = str(Path(sys.executable).with_name("metricsflow"))


@pytest.mark.integration
@pytest.mark.slow
def test_infra_run_restarts_a_killed_influxdb(infra_env: dict[str, str], tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [METRICSFLOW, "infra", "run"],
            env=infra_env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("metricsflow ready"), line
        pid_file = Path(infra_env["METRICSFLOW_INFRA_DIR"]) / "influxdb" / "influxdb.pid"
        first = read_pid_file(pid_file)
        assert first is not None
        os.killpg(first.pid, signal.SIGKILL)
        url = f"http://127.0.0.1:{infra_env['METRICSFLOW_INFLUXDB_PORT']}/ping"
        deadline = time.monotonic() + 90
        second = None
        while time.monotonic() < deadline:
            second = read_pid_file(pid_file)
            if second is not None and second.pid != first.pid and pid_alive(second):
                try:
                    if httpx.get(url, timeout=2).status_code == 204:
                        break
                except httpx.HTTPError:
                    pass
            time.sleep(0.5)
        else:
            pytest.fail(f"influxdb not restarted: {log.read_text()[-2000:]}")
        assert proc.poll() is None  # the run goes on
        text = log.read_text()
        assert "component exited name=influxdb" in text
        assert "component restarted name=influxdb" in text
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        assert second is not None
        assert not pid_alive(second)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
