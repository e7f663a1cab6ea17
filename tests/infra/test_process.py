"""Unit tests of the generic process helpers (real processes, no servers needed)."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from metricsflow.errors import InfrastructureError
from metricsflow.infra.process import (
    PidRecord,
    ProcessServer,
    free_port,
    free_ports,
    group_members,
    pid_alive,
    port_is_free,
    read_pid_file,
    spawn,
    stop_pid_file,
    tail_file,
    wait_until,
)

IGNORE_SIGTERM_WITH_CHILD = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"])
print("child", child.pid, flush=True)
time.sleep(120)
"""


def _line(log: Path, pattern: str) -> str | None:
    """First group (or the whole match) of a log line matching ``pattern`` entirely."""
    found = re.search(f"^{pattern}$", tail_file(log, 200), re.MULTILINE)
    if found is None:
        return None
    return found.group(1) if found.groups() else found.group(0)


def _spawn_python(tmp_path: Path, code: str, name: str = "proc") -> PidRecord:
    return spawn(
        [sys.executable, "-c", code],
        name=name,
        pid_file=tmp_path / f"{name}.pid",
        log_file=tmp_path / f"{name}.log",
    )


def test_free_ports_are_distinct_and_bindable_on_loopback() -> None:
    ports = free_ports(5)
    assert len(set(ports)) == 5
    assert all(port_is_free(p) for p in ports)
    assert port_is_free(free_port())


def test_a_bound_port_is_reported_as_in_use() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert not port_is_free(sock.getsockname()[1])


def test_spawn_starts_the_process_in_its_own_group_and_writes_the_pid_file(
    tmp_path: Path,
) -> None:
    record = _spawn_python(tmp_path, "import time; time.sleep(60)")
    try:
        assert read_pid_file(tmp_path / "proc.pid") == record
        assert os.getpgid(record.pid) == record.pid != os.getpgid(0)
        assert os.getsid(record.pid) == record.pid
        assert pid_alive(record)
    finally:
        assert stop_pid_file(tmp_path / "proc.pid", name="proc", timeout_s=5)
    assert not pid_alive(record)
    assert not (tmp_path / "proc.pid").exists()


def test_stop_by_pid_file_ends_a_cooperative_process_with_sigterm_quickly(
    tmp_path: Path,
) -> None:
    record = _spawn_python(tmp_path, "import time; time.sleep(60)")
    started = time.monotonic()
    assert stop_pid_file(tmp_path / "proc.pid", name="proc", timeout_s=10)
    assert time.monotonic() - started < 5
    assert not pid_alive(record)


def test_stop_kills_a_process_group_that_ignores_sigterm_after_the_timeout(
    tmp_path: Path,
) -> None:
    record = _spawn_python(tmp_path, IGNORE_SIGTERM_WITH_CHILD)
    wait_until(
        lambda: _line(tmp_path / "proc.log", r"child (\d+)") is not None,
        timeout_s=10,
        what="child started",
    )
    child_pid = int(_line(tmp_path / "proc.log", r"child (\d+)") or "0")
    assert sorted(group_members(record.pgid)) == sorted([record.pid, child_pid])

    started = time.monotonic()
    assert stop_pid_file(tmp_path / "proc.pid", name="proc", timeout_s=1.0)
    elapsed = time.monotonic() - started

    assert 1.0 <= elapsed < 8
    assert group_members(record.pgid) == []
    with contextlib.suppress(psutil.NoSuchProcess):  # gone, or a zombie not yet reaped by init
        assert psutil.Process(child_pid).status() == psutil.STATUS_ZOMBIE


def test_a_pid_record_round_trips_and_an_old_tick_count_is_matched_by_pid_alone() -> None:
    record = PidRecord(pid=4242, create_time=1_764_633_600.25)
    assert PidRecord.parse(record.render()) == record
    assert PidRecord.parse("4242\n") == PidRecord(pid=4242, create_time=None)
    # Older versions wrote the start time in clock ticks: not comparable, so PID alone.
    assert PidRecord.parse("4242\n123456\n") == PidRecord(pid=4242, create_time=None)
    assert PidRecord.parse("not a pid\n") is None


def test_a_pid_record_matches_its_process_despite_a_small_clock_step(tmp_path: Path) -> None:
    record = _spawn_python(tmp_path, "import time; time.sleep(60)")
    try:
        assert record.create_time is not None
        process = psutil.Process(record.pid)
        assert PidRecord(record.pid, record.create_time + 0.5).matches(process)
        assert not PidRecord(record.pid, record.create_time + 5).matches(process)
    finally:
        assert stop_pid_file(tmp_path / "proc.pid", name="proc", timeout_s=5)


def test_a_stale_pid_file_is_removed_and_nothing_is_signalled(tmp_path: Path) -> None:
    record = _spawn_python(tmp_path, "pass")
    wait_until(lambda: not pid_alive(record), timeout_s=10, what="exit")
    assert not stop_pid_file(tmp_path / "proc.pid", name="proc")
    assert not (tmp_path / "proc.pid").exists()


def test_a_pid_file_naming_a_reused_pid_never_signals_that_process(tmp_path: Path) -> None:
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = psutil.Process(bystander.pid).create_time()
        (tmp_path / "old.pid").write_text(
            PidRecord(pid=bystander.pid, create_time=started - 60).render()
        )
        assert not stop_pid_file(tmp_path / "old.pid", name="old")
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_a_missing_pid_file_means_nothing_to_stop(tmp_path: Path) -> None:
    assert not stop_pid_file(tmp_path / "absent.pid", name="absent")


def test_wait_until_fails_at_once_with_the_detail_when_the_process_dies() -> None:
    started = time.monotonic()
    with pytest.raises(InfrastructureError, match=r"(?s)exited before.*LOG TAIL"):
        wait_until(
            lambda: False,
            timeout_s=30,
            what="thing",
            alive=lambda: False,
            detail=lambda: "LOG TAIL",
        )
    assert time.monotonic() - started < 1


def test_wait_until_gives_up_at_its_deadline_and_reports_the_last_error() -> None:
    def check() -> bool:
        raise ConnectionRefusedError("nope")

    started = time.monotonic()
    with pytest.raises(InfrastructureError, match=r"not healthy after .*ConnectionRefusedError"):
        wait_until(check, timeout_s=0.3, what="thing", interval_s=0.05)
    assert 0.3 <= time.monotonic() - started < 2


def test_tail_file_returns_the_last_lines(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    path.write_text("".join(f"line {i}\n" for i in range(1000)))
    assert tail_file(path, 2) == "line 998\nline 999"
    assert tail_file(tmp_path / "missing.log") == ""


class HttpServer(ProcessServer):
    """The smallest real ProcessServer: Python's http.server."""

    name = "http"
    start_timeout_s = 15.0

    def __init__(self, data_dir: Path, port: int, argv: list[str] | None = None) -> None:
        super().__init__(data_dir)
        self.port = port
        self.argv = argv

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def install(self) -> None:
        pass

    def ports(self) -> tuple[int, ...]:
        return (self.port,)

    def command(self) -> list[str]:
        return self.argv or [
            sys.executable,
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            str(self.port),
        ]

    def health(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
        try:
            conn.request("GET", "/")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()


def test_a_process_server_starts_once_reports_health_and_stops_by_pid(tmp_path: Path) -> None:
    server = HttpServer(tmp_path / "srv", free_port())
    assert server.start() is True
    try:
        pid = read_pid_file(server.pid_file)
        assert server.health()
        assert server.is_running()
        assert server.start() is False  # idempotent: already healthy
        assert read_pid_file(server.pid_file) == pid
    finally:
        assert server.stop() is True
    assert not server.is_running()
    assert not server.health()
    assert server.stop() is False


def test_a_process_server_that_dies_at_startup_fails_with_its_log_tail(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import sys; print('boom: bad config'); sys.exit(3)"]
    server = HttpServer(tmp_path / "srv", free_port(), argv=argv)
    with pytest.raises(InfrastructureError, match=r"(?s)exited before.*boom: bad config"):
        server.start()
    assert not server.pid_file.exists()


def test_a_process_server_refuses_a_port_held_by_a_foreign_process(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        server = HttpServer(tmp_path / "srv", sock.getsockname()[1])
        with pytest.raises(InfrastructureError, match="already in use"):
            server.start()


def test_kill_ends_the_server_with_sigkill_at_once(tmp_path: Path) -> None:
    server = HttpServer(tmp_path / "srv", free_port())
    server.start()
    record = read_pid_file(server.pid_file)
    assert record is not None
    started = time.monotonic()
    assert server.kill() is True
    assert time.monotonic() - started < 2
    assert not pid_alive(record)


def test_stop_sends_sigterm_first_so_servers_can_shut_down_cleanly(tmp_path: Path) -> None:
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: (print('got', a[0], flush=True), sys.exit(0)))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    _spawn_python(tmp_path, code)
    wait_until(
        lambda: _line(tmp_path / "proc.log", "ready") is not None, timeout_s=10, what="ready"
    )
    assert stop_pid_file(tmp_path / "proc.pid", name="proc", timeout_s=10)
    assert _line(tmp_path / "proc.log", f"got {int(signal.SIGTERM)}") is not None
