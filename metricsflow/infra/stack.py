"""The components ``metricsflow infra up`` and ``make run`` start, and a foreground supervisor.

A component is a factory ``(settings, addresses) -> ManagedServer``; ``addresses`` maps the
names of the components listed before it to their addresses (so the gateway's factory can
read ``addresses["kafka"]``). Components are named by ``"module:function"`` references so
that this module imports nothing heavy; adding one to ``make run`` is one line in
:data:`RUN_COMPONENTS`.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import time
import types
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

from metricsflow.infra.base import ManagedServer
from metricsflow.infra.influxdb import InfluxDBConfig, InfluxDBServer
from metricsflow.infra.kafka import KafkaConfig, KafkaServer
from metricsflow.infra.settings import InfraSettings

logger = logging.getLogger(__name__)

ComponentFactory = Callable[[InfraSettings, Mapping[str, str]], ManagedServer]


def kafka_component(settings: InfraSettings, addresses: Mapping[str, str]) -> ManagedServer:
    return KafkaServer(
        KafkaConfig(
            data_dir=settings.infra_dir / "kafka",
            cache_dir=settings.cache_dir,
            port=settings.kafka_port,
            controller_port=settings.kafka_controller_port,
        )
    )


def influxdb_component(settings: InfraSettings, addresses: Mapping[str, str]) -> ManagedServer:
    return InfluxDBServer(
        InfluxDBConfig(
            data_dir=settings.infra_dir / "influxdb",
            port=settings.influxdb_port,
            rpc_port=settings.influxdb_rpc_port,
        )
    )


#: Local infrastructure: what ``metricsflow infra up`` starts and the tests need.
INFRA_COMPONENTS: tuple[str, ...] = (
    "metricsflow.infra.stack:kafka_component",
    "metricsflow.infra.stack:influxdb_component",
)

#: What ``make run`` (``metricsflow infra run``) starts, in order; stopped in reverse order.
#: Application components (gateway, worker) add one line each here.
RUN_COMPONENTS: tuple[str, ...] = (
    *INFRA_COMPONENTS,
    "metricsflow.infra.gateway:gateway_component",
    "metricsflow.worker.component:worker_component",
)


def load_factory(reference: str) -> ComponentFactory:
    """Resolve ``"package.module:function"``."""
    module_name, _, attribute = reference.partition(":")
    factory: ComponentFactory = getattr(importlib.import_module(module_name), attribute)
    return factory


def build_servers(settings: InfraSettings, references: Sequence[str]) -> list[ManagedServer]:
    """Instantiate the components in order (nothing is started)."""
    servers: list[ManagedServer] = []
    addresses: dict[str, str] = {}
    for reference in references:
        server = load_factory(reference)(settings, dict(addresses))
        addresses[server.name] = server.address
        servers.append(server)
    return servers


def ready_line(servers: Sequence[ManagedServer]) -> str:
    """``metricsflow ready kafka=<bootstrap> influxdb=<url> ...`` (the ``make run`` contract)."""
    return "metricsflow ready " + " ".join(f"{s.name}={s.address}" for s in servers)


def start_all(servers: Sequence[ManagedServer]) -> list[ManagedServer]:
    """Start the servers in order; return those this call started (not already running).
    On failure, stops what it started and re-raises."""
    started: list[ManagedServer] = []
    try:
        for server in servers:
            if server.start():
                started.append(server)
    except BaseException:
        stop_all(started)
        raise
    return started


def stop_all(servers: Sequence[ManagedServer]) -> None:
    """Stop the servers in reverse order; every one is tried even if another fails."""
    errors: list[BaseException] = []
    for server in reversed(servers):
        try:
            server.stop()
        except Exception as exc:
            logger.error("stop failed name=%s error=%s", server.name, exc)
            errors.append(exc)
    if errors:
        raise errors[0]


def parent_make_interrupted() -> bool:
    """``True`` when our parent is GNU make and it is handling SIGINT/SIGTERM/SIGHUP.

    ``make`` does not forward SIGINT to its recipe (it expects the terminal to have sent it to
    the whole process group) and then waits for the recipe forever. So when someone signals
    only make's PID (``Popen(["make", "run"]).send_signal(SIGINT)``), ``make run`` would hang
    with everything running. While make runs its fatal-signal handler that signal is blocked
    in make (``SigBlk`` in ``/proc/<ppid>/status``), which is what we look for."""
    ppid = os.getppid()
    try:
        comm = Path(f"/proc/{ppid}/comm").read_text().strip()
        if comm not in ("make", "gmake"):
            return False
        status = Path(f"/proc/{ppid}/status").read_text()
    except OSError:
        return False
    fatal = signal.SIGINT, signal.SIGTERM, signal.SIGHUP
    for line in status.splitlines():
        if line.startswith("SigBlk:"):
            blocked = int(line.split()[1], 16)
            return any(blocked & (1 << (sig - 1)) for sig in fatal)
    return False


class _Shutdown(BaseException):
    """Raised by the SIGINT/SIGTERM handlers of :func:`run_foreground`."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_shutdown(signum: int, frame: types.FrameType | None) -> None:
    raise _Shutdown(signum)


class Supervisor:
    """Restarts the components that die, with exponential back-off (Erlang/systemd style).

    :meth:`check` is called periodically with the monotonic time: a component found not
    running is logged (with its log tail) and restarted after ``initial_backoff_s``, doubling
    per consecutive failure up to ``max_backoff_s``; a component that stayed up for
    ``stable_after_s`` since its last restart starts again at ``initial_backoff_s``. A restart
    that fails is logged and retried after the next back-off; the supervisor never gives up
    (the other components keep serving meanwhile)."""

    def __init__(
        self,
        servers: Sequence[ManagedServer],
        *,
        initial_backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        stable_after_s: float = 60.0,
    ) -> None:
        self.servers = list(servers)
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self.stable_after_s = stable_after_s
        self._failures: dict[str, int] = {}
        self._restart_at: dict[str, float] = {}
        self._up_since: dict[str, float] = {}
        self.restarts: dict[str, int] = {}

    def _backoff(self, failures: int) -> float:
        return float(min(self.max_backoff_s, self.initial_backoff_s * 2 ** (failures - 1)))

    def check(self, now: float) -> None:
        for server in self.servers:
            name = server.name
            due = self._restart_at.get(name)
            if due is None:
                if server.is_running():
                    up = self._up_since.setdefault(name, now)
                    if now - up >= self.stable_after_s:
                        self._failures.pop(name, None)
                    continue
                failures = self._failures.get(name, 0) + 1
                self._failures[name] = failures
                delay = self._backoff(failures)
                self._restart_at[name] = now + delay
                self._up_since.pop(name, None)
                logger.error(
                    "component exited name=%s restart_in_s=%.1f consecutive_failures=%d "
                    "log_tail=\n%s",
                    name,
                    delay,
                    failures,
                    server.log_tail(30),
                )
            elif now >= due:
                del self._restart_at[name]
                self._restart(server, now)

    def _restart(self, server: ManagedServer, now: float) -> None:
        name = server.name
        attempt = self.restarts.get(name, 0) + 1
        self.restarts[name] = attempt
        logger.warning("restarting component name=%s restart=%d", name, attempt)
        try:
            server.start()
        except Exception as exc:
            failures = self._failures.get(name, 0) + 1
            self._failures[name] = failures
            delay = self._backoff(failures)
            self._restart_at[name] = now + delay
            logger.error(
                "component restart failed name=%s error=%s restart_in_s=%.1f", name, exc, delay
            )
            return
        self._up_since[name] = now
        logger.warning("component restarted name=%s address=%s", name, server.address)


def run_foreground(
    servers: Sequence[ManagedServer], *, out: IO[str] | None = None, poll_s: float = 0.5
) -> int:
    """Start ``servers``, print the ready line, and supervise until SIGINT/SIGTERM; then stop
    everything this call started (in reverse order). A component that dies on its own is
    restarted with back-off by a :class:`Supervisor` (and says so in the log) rather than
    ending the run. SIGHUP counts as SIGTERM. Returns the exit code."""
    out = out or sys.stdout
    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.getsignal(sig) for sig in handled}
    for sig in previous:
        signal.signal(sig, _raise_shutdown)
    started: list[ManagedServer] = []
    code = 0
    try:
        for server in servers:
            if not server.is_running():
                # Recorded before start(): a signal arriving mid-start still stops it.
                started.append(server)
            server.start()
        print(ready_line(servers), file=out, flush=True)
        supervisor = Supervisor(started)
        while True:
            time.sleep(poll_s)
            if parent_make_interrupted():
                logger.info("shutting down: parent make was interrupted")
                break
            supervisor.check(time.monotonic())
    except _Shutdown as shutdown:
        logger.info("shutting down signal=%s", signal.Signals(shutdown.signum).name)
    finally:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)  # finish stopping even on a second Ctrl-C
        try:
            stop_all(started)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return code
