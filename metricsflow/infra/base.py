"""The contract every locally managed server follows (Kafka, InfluxDB, Prometheus, ...).

A :class:`ManagedServer` owns one long-running process on loopback:

- :meth:`~ManagedServer.install` makes its binaries available; idempotent and cached, so a
  second call does nothing.
- :meth:`~ManagedServer.start` starts it in its own process group with a PID file in its
  data directory and returns only once a *real* health check passes (or raises
  :class:`~metricsflow.errors.InfrastructureError` with the tail of its log). Starting a server
  that is already running and healthy is a no-op that returns ``False``.
- :meth:`~ManagedServer.health` performs a real request against the server (a Kafka metadata
  call, ``GET /ping``), never a port or PID probe alone.
- :meth:`~ManagedServer.stop` stops it *by the PID in its PID file*: SIGTERM to the process
  group, then SIGKILL after a timeout. Never by name.
- :meth:`~ManagedServer.log_tail` returns the last lines of its log, for error messages.

The blocking methods have ``*_async`` twins that run them in a worker thread, for use from
inside an event loop (for example a fault-injection test that restarts Kafka mid-stream).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from pathlib import Path


class ManagedServer(ABC):
    """A server process that metricsflow installs, starts, checks and stops itself."""

    #: Short component name, used in log messages, PID file names and the ready line.
    name: str = "server"

    @property
    @abstractmethod
    def address(self) -> str:
        """How clients reach the server: ``host:port`` for Kafka, a URL for HTTP servers."""

    @property
    @abstractmethod
    def data_dir(self) -> Path:
        """The directory holding this server's configuration, data, PID file and log."""

    @abstractmethod
    def install(self) -> None:
        """Make the server's binaries available. Idempotent and cached."""

    @abstractmethod
    def start(self) -> bool:
        """Start the server and wait until it is healthy.

        Returns ``True`` when a process was started, ``False`` when a healthy instance owned by
        this data directory was already running. Raises ``InfrastructureError`` (with the log
        tail in the message) when the server does not become healthy before its deadline.
        """

    @abstractmethod
    def health(self) -> bool:
        """Run a real client request against the server; ``True`` when it succeeds."""

    @abstractmethod
    def stop(self, timeout_s: float | None = None) -> bool:
        """Stop the server by its PID file: SIGTERM to its group, SIGKILL after the timeout.

        Returns ``True`` when a running process was stopped, ``False`` when none was running.
        """

    @abstractmethod
    def kill(self) -> bool:
        """SIGKILL the server's process group at once (a crash, for fault tests)."""

    @abstractmethod
    def is_running(self) -> bool:
        """``True`` when the process named by the PID file is alive (no health check)."""

    @abstractmethod
    def log_tail(self, lines: int = 50) -> str:
        """The last ``lines`` lines of the server's log file ('' when there is none)."""

    async def start_async(self) -> bool:
        """:meth:`start` in a worker thread, so an event loop keeps running meanwhile."""
        return await asyncio.to_thread(self.start)

    async def stop_async(self, timeout_s: float | None = None) -> bool:
        """:meth:`stop` in a worker thread."""
        return await asyncio.to_thread(self.stop, timeout_s)

    async def kill_async(self) -> bool:
        """:meth:`kill` in a worker thread."""
        return await asyncio.to_thread(self.kill)

    async def health_async(self) -> bool:
        """:meth:`health` in a worker thread."""
        return await asyncio.to_thread(self.health)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name} address={self.address}>"
