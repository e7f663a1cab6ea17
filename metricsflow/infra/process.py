"""Generic process management for local servers: ports, PID files, start, health wait, stop.

Rules this module enforces (see ``docs/infrastructure.md``):

- Servers listen on 127.0.0.1 only; :func:`free_port` / :func:`free_ports` pick free ports.
- A server starts in its own process group (``start_new_session=True``) with its output
  appended to ``<data_dir>/<name>.log`` and its PID written to ``<data_dir>/<name>.pid``
  (first line the PID, second line the process start time as psutil reports it, so that a
  PID reused by an unrelated process is never signalled).
- Readiness is a real health check polled against a deadline, never a bare sleep; if the
  process dies while we wait, we fail at once with the tail of its log.
- A server is stopped *only* through its PID file: SIGTERM to the process group, then SIGKILL
  after a timeout. Nothing is ever stopped by name.

:class:`ProcessServer` puts these together as a reusable :class:`ManagedServer`; a concrete
server supplies its command line, its configuration files and its health check.

Process facts (alive, zombie, start time, process group members) come from ``psutil``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import http.client
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psutil

from metricsflow.errors import InfrastructureError
from metricsflow.infra.base import ManagedServer

logger = logging.getLogger(__name__)

T = TypeVar("T")

LOOPBACK = "127.0.0.1"

# Children spawned by this Python process, so that we can reap them (no zombies) and so that
# ``is_alive`` is exact for them.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
_CHILDREN_LOCK = threading.Lock()


# --------------------------------------------------------------------------------------------
# Ports
# --------------------------------------------------------------------------------------------


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """``count`` distinct ports that are free on ``host`` right now (all sockets held open
    until every port is chosen, so the kernel never hands out the same one twice)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port(host: str = LOOPBACK) -> int:
    """A port that is free on ``host`` right now."""
    return free_ports(1, host)[0]


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """``True`` when a server could bind ``host:port`` now (``SO_REUSEADDR``, as servers do,
    so a port in ``TIME_WAIT`` after a restart counts as free)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


# --------------------------------------------------------------------------------------------
# Processes and PID files
# --------------------------------------------------------------------------------------------


#: How far the start time psutil reports now may be from the one in a PID file for the same
#: process. psutil derives it from the boot time, which moves when the wall clock is stepped.
#: PIDs are handed out cyclically, so a PID comes back only after the whole PID range has been
#: used, which does not happen within a second in practice (psutil's own PID-reuse check
#: assumes 0.01 s).
START_TIME_TOLERANCE_S = 1.0


@dataclass(frozen=True)
class PidRecord:
    """What a PID file holds: the PID (which is also the process group id, because servers
    are started with ``start_new_session=True``) and the process start time (seconds since
    the epoch, as :meth:`psutil.Process.create_time` reports it)."""

    pid: int
    create_time: float | None

    @property
    def pgid(self) -> int:
        return self.pid

    def render(self) -> str:
        created = f"{self.create_time:.2f}" if self.create_time is not None else ""
        return f"{self.pid}\n{created}\n"

    @classmethod
    def parse(cls, text: str) -> PidRecord | None:
        lines = text.split("\n")
        try:
            pid = int(lines[0].strip())
        except (ValueError, IndexError):
            return None
        created_text = lines[1].strip() if len(lines) > 1 else ""
        # A start time has a decimal point; an integer is the clock-tick count older versions
        # wrote, which is not comparable: such a record is matched by PID alone.
        try:
            created = float(created_text) if "." in created_text else None
        except ValueError:
            created = None
        return cls(pid=pid, create_time=created)

    def matches(self, process: psutil.Process) -> bool:
        """``process`` is the one this record names, not a later one that got its PID."""
        if self.create_time is None:
            return True
        try:
            created = process.create_time()
        except psutil.NoSuchProcess:
            return False
        return abs(created - self.create_time) <= START_TIME_TOLERANCE_S


def live_process(pid: int) -> psutil.Process | None:
    """The process ``pid`` unless it does not exist or is a zombie whose threads have all
    exited. (The main thread of a multi-threaded process, e.g. a JVM, can be a zombie while
    its other threads still run: that process is alive.)"""
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            ended = process.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
            if ended and process.num_threads() <= 1:
                return None
    except psutil.NoSuchProcess:  # ZombieProcess included: one we cannot even inspect
        return None
    except psutil.AccessDenied:
        pass  # exists, owned by someone else; its status is not ours to read
    return process


def read_pid_file(path: Path) -> PidRecord | None:
    """The record in ``path``; ``None`` when the file is missing or unreadable."""
    try:
        return PidRecord.parse(path.read_text())
    except FileNotFoundError:
        return None


def _reap_if_child(pid: int) -> bool | None:
    """For a child of this process: poll it (reaping a zombie). ``True`` if alive, ``False`` if
    exited, ``None`` when ``pid`` is not one of our children."""
    with _CHILDREN_LOCK:
        child = _CHILDREN.get(pid)
        if child is None:
            return None
        if child.poll() is None:
            return True
        del _CHILDREN[pid]
        return False


def pid_alive(record: PidRecord) -> bool:
    """``True`` when the process named by ``record`` is alive and is the same process (its start
    time matches), zombies counting as dead."""
    child = _reap_if_child(record.pid)
    if child is not None:
        # waitpid is exact: it reports an exit only once every thread has gone.
        return child
    process = live_process(record.pid)
    return process is not None and record.matches(process)


def group_members(pgid: int) -> list[int]:
    """PIDs of the live (non-zombie) processes in process group ``pgid``."""
    members = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) != pgid:
                continue
        except (ProcessLookupError, PermissionError):
            continue
        if live_process(process.pid) is not None:
            members.append(process.pid)
    return members


def spawn(
    argv: Sequence[str],
    *,
    name: str,
    pid_file: Path,
    log_file: Path,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> PidRecord:
    """Start ``argv`` in a new session/process group, output appended to ``log_file``, and
    write ``pid_file``. Returns the PID record."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        log.write(f"\n=== metricsflow: starting {name}: {' '.join(argv)}\n".encode())
        log.flush()
        try:
            child = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=dict(env) if env is not None else None,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise InfrastructureError(f"cannot start {name}: {argv[0]}: {exc}") from exc
    with _CHILDREN_LOCK:
        _CHILDREN[child.pid] = child
    try:
        created: float | None = psutil.Process(child.pid).create_time()
    except psutil.NoSuchProcess:
        created = None
    record = PidRecord(pid=child.pid, create_time=created)
    tmp = pid_file.with_name(pid_file.name + ".tmp")
    tmp.write_text(record.render())
    tmp.replace(pid_file)
    logger.info("started name=%s pid=%d pid_file=%s log=%s", name, child.pid, pid_file, log_file)
    return record


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _wait_group_exit(record: PidRecord, deadline: float, interval_s: float = 0.05) -> bool:
    while True:
        leader = pid_alive(record)
        if not leader and not group_members(record.pgid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


def stop_pid_file(
    pid_file: Path, *, name: str, timeout_s: float = 15.0, kill_immediately: bool = False
) -> bool:
    """Stop the process group named by ``pid_file``: SIGTERM, then SIGKILL after ``timeout_s``
    (SIGKILL at once with ``kill_immediately``). Removes the PID file.

    Returns ``True`` when something was running and has been stopped, ``False`` when the PID
    file was missing or stale. Never signals a process whose start time does not match the
    record (a PID reused by an unrelated process)."""
    record = read_pid_file(pid_file)
    if record is None:
        return False
    leader_alive = pid_alive(record)
    if not leader_alive:
        reused = live_process(record.pid) is not None
        # If the PID now belongs to another process, the old group cannot exist any more
        # (Linux never reuses a PID that is still a process group id): nothing to do.
        if reused or not group_members(record.pgid):
            logger.info("stale pid file name=%s pid=%d removed", name, record.pid)
            pid_file.unlink(missing_ok=True)
            return False
    first = signal.SIGKILL if kill_immediately else signal.SIGTERM
    logger.info("stopping name=%s pgid=%d signal=%s", name, record.pgid, first.name)
    _signal_group(record.pgid, first)
    if not _wait_group_exit(record, time.monotonic() + (5.0 if kill_immediately else timeout_s)):
        if first is signal.SIGTERM:
            logger.warning(
                "no exit after SIGTERM name=%s pgid=%d timeout_s=%.1f; sending SIGKILL",
                name,
                record.pgid,
                timeout_s,
            )
            _signal_group(record.pgid, signal.SIGKILL)
        if not _wait_group_exit(record, time.monotonic() + 10.0):
            raise InfrastructureError(
                f"{name}: process group {record.pgid} still alive after SIGKILL", retriable=True
            )
    pid_file.unlink(missing_ok=True)
    logger.info("stopped name=%s pid=%d", name, record.pid)
    return True


def tail_file(path: Path, lines: int = 50) -> str:
    """The last ``lines`` lines of ``path`` ('' when missing)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max(16384, lines * 400)))
            data = fh.read()
    except FileNotFoundError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def wait_until(
    check: Callable[[], bool],
    *,
    timeout_s: float,
    what: str,
    interval_s: float = 0.1,
    alive: Callable[[], bool] | None = None,
    detail: Callable[[], str] | None = None,
) -> None:
    """Poll ``check`` until it returns ``True``; raise ``InfrastructureError`` at the deadline,
    or as soon as ``alive`` says the process died. ``detail`` (e.g. a log tail) is appended to
    the error message. Exceptions from ``check`` count as "not yet"."""
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    while True:
        try:
            if check():
                return
        except Exception as exc:
            last_error = exc
        problem = None
        if alive is not None and not alive():
            problem = "process exited before it became healthy"
        elif time.monotonic() >= deadline:
            problem = f"not healthy after {timeout_s:.0f}s"
        if problem is not None:
            message = f"{what}: {problem}"
            if last_error is not None:
                message += f" (last error: {last_error!r})"
            if detail is not None:
                message += f"\n--- log tail ---\n{detail()}"
            raise InfrastructureError(message, retriable=True)
        time.sleep(max(0.0, min(interval_s, deadline - time.monotonic())))


def run_coroutine_sync(factory: Callable[[], Coroutine[Any, Any, T]], timeout_s: float) -> T:
    """Run the coroutine made by ``factory`` to completion from synchronous code, even when
    the calling thread is already running an event loop (then in a helper thread)."""

    async def bounded() -> T:
        return await asyncio.wait_for(factory(), timeout_s)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(bounded())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, bounded()).result()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (serializes concurrent ``infra up``/``down``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------
# A reusable ManagedServer built on the helpers above
# --------------------------------------------------------------------------------------------


class ProcessServer(ManagedServer):
    """A :class:`ManagedServer` that is one OS process (plus whatever it forks).

    Subclasses implement :meth:`command`, :meth:`health`, :meth:`install` and usually
    :meth:`prepare` (write configuration, format storage) and :meth:`ports`."""

    start_timeout_s: float = 60.0
    stop_timeout_s: float = 15.0
    health_interval_s: float = 0.1

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = Path(data_dir).resolve()
        self._thread_lock = threading.Lock()

    # -- to implement ------------------------------------------------------------------------

    @abstractmethod
    def command(self) -> list[str]:
        """The argv that runs the server in the foreground."""

    def prepare(self) -> None:
        """Write configuration and initialize storage in :attr:`data_dir` (idempotent)."""

    def environment(self) -> dict[str, str] | None:
        """The environment for the process (``None``: inherit ours)."""
        return None

    def ports(self) -> tuple[int, ...]:
        """The loopback ports the server binds (checked free before starting)."""
        return ()

    def after_healthy(self) -> None:
        """Extra readiness work once :meth:`health` passes (e.g. warm a coordinator)."""

    # -- the contract ------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def pid_file(self) -> Path:
        return self._data_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self._data_dir / f"{self.name}.log"

    def is_running(self) -> bool:
        record = read_pid_file(self.pid_file)
        return record is not None and pid_alive(record)

    def log_tail(self, lines: int = 50) -> str:
        return tail_file(self.log_file, lines)

    def start(self) -> bool:
        with self._thread_lock, file_lock(self._data_dir / f".{self.name}.lock"):
            return self._start_locked()

    def _wait_healthy(self, what: str) -> None:
        """Poll :meth:`health` until it passes, failing at once (with the log tail) if the
        process dies, or after :attr:`start_timeout_s`."""
        wait_until(
            self.health,
            timeout_s=self.start_timeout_s,
            what=what,
            interval_s=self.health_interval_s,
            alive=self.is_running,
            detail=self.log_tail,
        )

    def _start_locked(self) -> bool:
        what = f"{self.name} at {self.address}"
        if self.is_running():
            # Ours and alive: it may still be starting, give it the usual deadline.
            self._wait_healthy(what)
            logger.info("already running name=%s address=%s", self.name, self.address)
            return False
        busy = [p for p in self.ports() if not port_is_free(p)]
        if busy:
            raise InfrastructureError(
                f"{self.name}: port(s) {busy} on {LOOPBACK} already in use by a process that "
                f"metricsflow did not start from {self._data_dir}; stop it, or choose other "
                "ports (see README: ports and environment variables)",
                retriable=False,
            )
        self.install()
        self._data_dir.mkdir(parents=True, exist_ok=True)
        self.prepare()
        started = time.monotonic()
        spawn(
            self.command(),
            name=self.name,
            pid_file=self.pid_file,
            log_file=self.log_file,
            cwd=self._data_dir,
            env=self.environment(),
        )
        try:
            self._wait_healthy(what)
            self.after_healthy()
        except BaseException:
            stop_pid_file(self.pid_file, name=self.name, timeout_s=5.0)
            raise
        logger.info(
            "healthy name=%s address=%s startup_s=%.2f",
            self.name,
            self.address,
            time.monotonic() - started,
        )
        return True

    def stop(self, timeout_s: float | None = None) -> bool:
        if not self.pid_file.exists():
            return False
        with self._thread_lock, file_lock(self._data_dir / f".{self.name}.lock"):
            return stop_pid_file(
                self.pid_file,
                name=self.name,
                timeout_s=self.stop_timeout_s if timeout_s is None else timeout_s,
            )

    def kill(self) -> bool:
        if not self.pid_file.exists():
            return False
        with self._thread_lock, file_lock(self._data_dir / f".{self.name}.lock"):
            return stop_pid_file(self.pid_file, name=self.name, kill_immediately=True)


class PackageHttpServer(ProcessServer):
    """A server that is part of this package (the gateway, a worker): nothing to install,
    HTTP on one loopback port, healthy when ``GET /health`` answers 200."""

    def __init__(self, data_dir: Path, host: str, port: int) -> None:
        super().__init__(data_dir)
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def address(self) -> str:
        return self.url

    def install(self) -> None:
        """Nothing to install: the server is this package."""

    def ports(self) -> tuple[int, ...]:
        return (self.port,)

    def health(self) -> bool:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=3.0)
        try:
            conn.request("GET", "/health")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()
