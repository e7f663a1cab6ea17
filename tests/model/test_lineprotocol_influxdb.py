"""Differential test: the real InfluxDB stores the same from a client's body as from our
canonical lines, and refuses the same lines.

Every example is a batch of generated bodies (tests/model/lp_bodies.py). Each body is written
unchanged to database A (``/write?precision=<p>``, as a client would); the same body goes
through :func:`canonicalize` and its canonical lines are written to database B
(``precision=n``, as the worker writes the raw tier). Then A and B must hold the same series
keys, field types and rows, and InfluxDB must answer 204 to a body exactly when we refuse none
of its lines. The only lines left out are those we refuse on purpose where InfluxDB would
store something (docs/ingestion.md, "Deliberate differences"); each is named by its reason.

Deterministic (``derandomize``): the same bodies every run; at least 2,000 of them.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings

from metricsflow.infra.influxdb import InfluxDBServer
from metricsflow.model.lineprotocol import PRECISION_V1, Limits
from tests.model.influx_diff import PREFIX_RE, deliberate_prefixes, diff, influx, stored
from tests.model.lp_bodies import Body, bodies
from tests.model.test_lp_native import canonicalize_checked

BODIES_PER_EXAMPLE = 40
EXAMPLES = 52
HOUR_NS = 3_600_000_000_000


@dataclass
class Run:
    """One differential run: database A takes the bodies, B our canonical lines."""

    url: str
    db_a: str
    db_b: str
    batches: int = 0
    bodies: int = 0
    skip: set[str] = field(default_factory=set)
    texts: dict[str, str] = field(default_factory=dict)
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=60))

    def write_batch(self, batch: list[Body]) -> None:
        number = self.batches
        self.batches += 1
        texts = [b.text.replace("L§", f"L{number}") for b in batch]
        for i, text in enumerate(texts):
            self.texts[f"{number}/{self.bodies + i}"] = text
        self.bodies += len(batch)
        client = self.client
        with ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(
                    lambda tb: client.post(
                        f"{self.url}/write",
                        params={"db": self.db_a, "precision": tb[1].precision},
                        content=tb[0].encode(),
                    ),
                    zip(texts, batch, strict=True),
                )
            )
            ours: list[str] = []
            for text, b, r in zip(texts, batch, answers, strict=True):
                result = canonicalize_checked(
                    text,
                    precision_factor=PRECISION_V1[b.precision],
                    default_time_ns=time.time_ns(),
                    limits=Limits(),
                )
                assert r.status_code in (204, 400), (r.status_code, r.text)
                deliberate = deliberate_prefixes(result.errors)
                self.skip |= deliberate
                if not deliberate:
                    assert (r.status_code == 204) == (not result.errors), (
                        f"InfluxDB answered {r.status_code} {r.text} to {text!r} "
                        f"(precision {b.precision}); we refused {[str(e) for e in result.errors]}"
                    )
                ours += result.lines
            if ours:
                r = client.post(
                    f"{self.url}/write",
                    params={"db": self.db_b, "precision": "n"},
                    content="\n".join(ours).encode(),
                )
                assert r.status_code == 204, (r.text, ours)

    def compare(self, window: tuple[int, int]) -> None:
        for number in range(self.batches):
            names = f"/^L{number}_/"
            a = stored(self.url, self.db_a, None, window, self.skip, names)
            b = stored(self.url, self.db_b, None, window, self.skip, names)
            problems = diff(a, b)
            assert not problems, (
                "\n".join(problems)
                + "\nbodies: "
                + repr([t for k, t in self.texts.items() if k.startswith(f"{number}/")])
            )
        # lines a damaged body split off carry no prefix: compare them whole
        others = [
            sorted(
                v[0]
                for s in influx(self.url, "SHOW MEASUREMENTS", db).get("series", [])
                for v in s["values"]
                if not PREFIX_RE.match(v[0])
            )
            for db in (self.db_a, self.db_b)
        ]
        assert others[0] == others[1]


@pytest.mark.slow
@pytest.mark.timeout(900)  # ~30 s on an idle 2-core machine; far more when it is shared
def test_influxdb_stores_the_same_from_a_body_and_from_our_canonical_lines(
    influxdb_server: InfluxDBServer,
) -> None:
    url = influxdb_server.url
    run = Run(url, f"lpdiff_a_{uuid.uuid4().hex[:8]}", f"lpdiff_b_{uuid.uuid4().hex[:8]}")
    for db in (run.db_a, run.db_b):
        influx(url, f'CREATE DATABASE "{db}"')
    try:
        start = time.time_ns()

        @settings(
            max_examples=EXAMPLES,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.generate],  # a failure names its body; shrinking batches costs minutes
        )
        @given(bodies(BODIES_PER_EXAMPLE))
        def generated(batch: list[Body]) -> None:
            run.write_batch(batch)

        generated()
        assert run.bodies >= 2_000
        run.compare((start - HOUR_NS, time.time_ns()))
    finally:
        for db in (run.db_a, run.db_b):
            influx(url, f'DROP DATABASE "{db}"')
