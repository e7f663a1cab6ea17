"""The Apache Flink contender of ``bench_worker.py``: build (Maven Central only) and command.

``bench/flink/`` is a small Maven project (pinned Flink 2.2.1 + flink-connector-kafka
5.0.0-2.2, see its ``pom.xml``). :func:`build` compiles it and copies its runtime dependencies
into ``~/.cache/metricsflow/flink-bench-<hash>/`` (``job.jar`` + ``libs/``), where ``<hash>``
covers the pom and every source file, so an edit rebuilds and an unchanged tree costs nothing.
The build goes to a ``.partial`` directory first and is renamed only when complete (an
interrupted build is redone), under a file lock (two benches at once build once).
:func:`command` is the ``java -cp ... io.metricsflow.bench.FlinkBenchJob ...`` line that runs
the job in a local MiniCluster (one JVM).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from metricsflow.infra.kafka import find_java
from metricsflow.infra.process import file_lock

PROJECT = Path(__file__).resolve().parent / "flink"
MAIN_CLASS = "io.metricsflow.bench.FlinkBenchJob"
JAR_NAME = "metricsflow-flink-bench-1.jar"
# What a JDK 17 needs for Flink's reflection (Kryo, closure cleaner); the same list as Flink's
# own start scripts pass (env.java.opts.all in its default config).
JVM_OPENS = [
    f"--add-opens=java.base/{pkg}=ALL-UNNAMED"
    for pkg in (
        "java.lang",
        "java.lang.reflect",
        "java.net",
        "java.io",
        "java.nio",
        "java.text",
        "java.time",
        "java.util",
        "java.util.concurrent",
        "java.util.concurrent.atomic",
        "java.util.concurrent.locks",
        "sun.nio.ch",
    )
] + ["--add-exports=java.base/sun.net.util=ALL-UNNAMED"]


class FlinkBuildError(RuntimeError):
    """The Maven build of ``bench/flink`` failed (the message holds Maven's last lines)."""


def source_digest(project: Path = PROJECT) -> str:
    """Hash of ``pom.xml`` and every file under ``src/`` (paths and contents)."""
    h = hashlib.sha256()
    files = [project / "pom.xml", *sorted(p for p in (project / "src").rglob("*") if p.is_file())]
    for path in files:
        h.update(str(path.relative_to(project)).encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def build(cache_dir: Path, project: Path = PROJECT) -> Path:
    """Build the job once per source digest; return its directory (``job.jar``, ``libs/``)."""
    digest = source_digest(project)
    home = cache_dir / f"flink-bench-{digest}"
    if (home / ".installed").is_file():
        return home
    cache_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(cache_dir / ".flink-bench.lock"):
        if (home / ".installed").is_file():
            return home
        mvn = shutil.which("mvn")
        if mvn is None:
            raise FlinkBuildError("Maven ('mvn') is not on PATH (Debian: apt-get install maven)")
        partial = cache_dir / f"flink-bench-{digest}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        argv = [
            mvn,
            "-B",
            "-q",
            "-f",
            str(project / "pom.xml"),
            f"-Dflinkbench.target={partial / 'target'}",
            "package",
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={partial / 'libs'}",
        ]
        print(f"building the Flink job ({project}) into {home} ...", flush=True)
        result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=1800)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
            raise FlinkBuildError(f"mvn exited with {result.returncode}:\n{tail}")
        jar = partial / "target" / JAR_NAME
        if not jar.is_file():
            raise FlinkBuildError(f"{jar} missing after a successful mvn run")
        shutil.copy2(jar, partial / "job.jar")
        shutil.rmtree(partial / "target")
        shutil.rmtree(home, ignore_errors=True)
        partial.rename(home)
        (home / ".installed").write_text(digest + "\n")
        for old in cache_dir.glob("flink-bench-*"):  # earlier builds of other sources
            if old.is_dir() and old != home and not old.name.endswith(".partial"):
                shutil.rmtree(old, ignore_errors=True)
    return home


def command(
    home: Path,
    *,
    bootstrap: str,
    topic: str,
    group: str,
    influx_url: str,
    db: str,
    backend: str,
    checkpoint_dir: Path,
    parallelism: int = 2,
    bound_ms: int = 10_000,
    heap: str = "1g",
) -> list[str]:
    """``java ... FlinkBenchJob ...`` for a built job directory."""
    return [
        find_java(),
        f"-Xmx{heap}",
        "-XX:+UseG1GC",
        *JVM_OPENS,
        "-cp",
        f"{home / 'job.jar'}:{home / 'libs'}/*",
        MAIN_CLASS,
        "--bootstrap",
        bootstrap,
        "--topic",
        topic,
        "--group",
        group,
        "--influx",
        influx_url,
        "--db",
        db,
        "--backend",
        backend,
        "--checkpoint-dir",
        str(checkpoint_dir),
        "--parallelism",
        str(parallelism),
        "--bound-ms",
        str(bound_ms),
    ]
