"""A real InfluxDB 1.x server (Debian's ``influxdb`` package, 1.6.7) on loopback.

InfluxDB 1.6.7 serves the v1 HTTP API (``/ping``, ``/write``, ``/query``) and runs continuous
queries; it has no ``/api/v2``. It is installed with ``apt-get`` when ``influxd`` is missing,
together with ``influxdb-client`` (the ``influx`` CLI) and ``prometheus`` (used by the
gateway's tests), in one step.
"""

from __future__ import annotations

import http.client
import logging
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from metricsflow.errors import InfrastructureError
from metricsflow.infra.process import LOOPBACK, ProcessServer

logger = logging.getLogger(__name__)

#: Binary -> Debian package that provides it. Installed together when any is missing.
DEBIAN_PACKAGES: Mapping[str, str] = {
    "influxd": "influxdb",
    "influx": "influxdb-client",
    "prometheus": "prometheus",
}
_SBIN_DIRS = ("/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin")


def find_binary(name: str) -> str | None:
    """``name`` on PATH or in the usual system directories (sudo's PATH may differ)."""
    found = shutil.which(name)
    if found:
        return found
    for directory in _SBIN_DIRS:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _privilege_prefix() -> list[str]:
    if os.geteuid() == 0:
        return []
    sudo = shutil.which("sudo")
    if sudo is None:
        raise InfrastructureError(
            "installing Debian packages needs root: run as root, or install sudo, or install "
            f"them yourself: apt-get install {' '.join(DEBIAN_PACKAGES.values())}"
        )
    return [sudo, "-n"]


def install_debian_packages(binaries: Mapping[str, str] = DEBIAN_PACKAGES) -> list[str]:
    """``apt-get install`` the packages whose binaries are missing; return what was installed.

    Runs ``apt-get update`` first (needed on a fresh machine). Idempotent: when every binary
    is present nothing runs."""
    missing = sorted({pkg for binary, pkg in binaries.items() if find_binary(binary) is None})
    if not missing:
        return []
    apt_get = shutil.which("apt-get")
    if apt_get is None:
        raise InfrastructureError(
            f"missing {missing} and apt-get is not available; install InfluxDB 1.x "
            "(influxd, influx) and Prometheus with your package manager"
        )
    prefix = _privilege_prefix()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (
        [*prefix, apt_get, "update"],
        [*prefix, apt_get, "install", "-y", "--no-install-recommends", *missing],
    ):
        logger.info("running argv=%s", " ".join(argv))
        result = subprocess.run(
            argv, capture_output=True, text=True, env=env, check=False, timeout=1800
        )
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
            raise InfrastructureError(
                f"{' '.join(argv)} exited with {result.returncode}\n{tail}", retriable=True
            )
    still_missing = [b for b in binaries if find_binary(b) is None]
    if still_missing:
        raise InfrastructureError(f"installed {missing} but {still_missing} are still missing")
    logger.info("installed debian packages=%s", ",".join(missing))
    return missing


@dataclass(frozen=True)
class InfluxDBConfig:
    """One InfluxDB 1.x server on loopback, all state under ``data_dir``."""

    data_dir: Path
    port: int = 8086
    rpc_port: int = 8088
    continuous_queries: bool = True
    log_level: str = "info"


def render_config(config: InfluxDBConfig) -> str:
    """The ``influxdb.conf`` for ``config`` (InfluxDB 1.6 TOML)."""
    d = config.data_dir
    return f"""\
# Written by metricsflow (metricsflow/infra/influxdb.py); regenerated on every start.
reporting-enabled = false
bind-address = "{LOOPBACK}:{config.rpc_port}"

[meta]
  dir = "{d / "meta"}"
  retention-autocreate = true
  logging-enabled = false

[data]
  dir = "{d / "data"}"
  wal-dir = "{d / "wal"}"
  wal-fsync-delay = "0s"
  index-version = "inmem"
  query-log-enabled = false
  trace-logging-enabled = false

[retention]
  enabled = true
  check-interval = "30m0s"

[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[http]
  enabled = true
  bind-address = "{LOOPBACK}:{config.port}"
  auth-enabled = false
  log-enabled = false
  suppress-write-log = true
  pprof-enabled = false
  unix-socket-enabled = false
  max-body-size = 25000000

[logging]
  format = "logfmt"
  level = "{config.log_level}"
  suppress-logo = true

[continuous_queries]
  enabled = {"true" if config.continuous_queries else "false"}
  log-enabled = false
  run-interval = "1s"
"""


class InfluxDBServer(ProcessServer):
    """InfluxDB 1.x (``influxd``) with its meta, data and WAL under the data dir."""

    name = "influxdb"
    start_timeout_s = 60.0
    stop_timeout_s = 15.0

    def __init__(self, config: InfluxDBConfig) -> None:
        super().__init__(config.data_dir)
        self.config = config

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``: the v1 HTTP API."""
        return f"http://{LOOPBACK}:{self.config.port}"

    @property
    def address(self) -> str:
        return self.url

    @property
    def config_file(self) -> Path:
        return self.data_dir / "influxdb.conf"

    def ports(self) -> tuple[int, ...]:
        return (self.config.port, self.config.rpc_port)

    def install(self) -> None:
        install_debian_packages()

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(render_config(self.config))

    def command(self) -> list[str]:
        influxd = find_binary("influxd")
        if influxd is None:
            raise InfrastructureError(
                "influxdb: 'influxd' not found; run `metricsflow infra install`"
            )
        return [influxd, "run", "-config", str(self.config_file)]

    def environment(self) -> dict[str, str]:
        # influxd lets INFLUXDB_* variables override the config file; ours must win.
        return {k: v for k, v in os.environ.items() if not k.startswith("INFLUXDB_")}

    def health(self) -> bool:
        """``GET /ping`` answers 204."""
        conn = http.client.HTTPConnection(LOOPBACK, self.config.port, timeout=2.0)
        try:
            conn.request("GET", "/ping")
            return conn.getresponse().status == 204
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()
