"""Fencing when InfluxDB hangs: a write of a revoked partition still in flight when the
revocation's wait ends is reported as unconfirmed (once), and never re-sent.

InfluxDB is replaced by a tiny HTTP server that answers ``/query`` and never answers
``/write``: a hung server is the one case a real stopped InfluxDB cannot show (a stopped
server refuses connections, which is a certain "not applied")."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from metricsflow.runtime.records import RawLinesBatch
from metricsflow.sinks.influxdb import InfluxDBSink, InfluxDBSinkConfig


class HungWrites(BaseHTTPRequestHandler):
    writes: list[bytes] = []
    received = threading.Event()
    release = threading.Event()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path.startswith("/query"):
            payload = b'{"results":[{"statement_id":0}]}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        HungWrites.writes.append(body)
        HungWrites.received.set()
        HungWrites.release.wait(30)  # never answers within the client's timeout

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def hung_server() -> Iterator[str]:
    HungWrites.writes = []
    HungWrites.received = threading.Event()
    HungWrites.release = threading.Event()
    server = ThreadingHTTPServer(("127.0.0.1", 0), HungWrites)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    HungWrites.release.set()
    server.shutdown()
    server.server_close()


def test_a_write_in_flight_at_revocation_is_reported_unconfirmed_and_never_resent(
    hung_server: str, tmp_path: Path
) -> None:
    sink = InfluxDBSink(
        InfluxDBSinkConfig(
            url=hung_server,
            dead_letter_dir=tmp_path,
            request_timeout_s=1.0,
            retry_initial_s=0.05,
            retry_max_s=0.1,
            gzip_level=0,
        )
    )
    sink.open()
    try:
        line = f"m v=1 {time.time_ns()}".encode()
        sink.write_raw(RawLinesBatch(1, "db", line, 1))
        sink.flush_marker()
        assert HungWrites.received.wait(10), "the write reached the server"
        sink.fence(frozenset({1}), timeout_s=0.2)  # the request is still in flight
        assert sink.stats.unconfirmed_writes == 1
        sink.flush(10)  # the attempt times out; the retry has nothing left to send
        assert sink.stats.unconfirmed_writes == 1, "reported once per attempt"
        assert len(HungWrites.writes) == 1, "never re-sent after the revocation"
        assert sink.stats.points_written == 0
    finally:
        sink.close(flush=False)
