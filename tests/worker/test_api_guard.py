"""The worker API's mutating endpoints: token, no cross-site requests, bounded savepoints.

The HTTP layer only, over ASGI, with a stand-in runner whose savepoints are directories it
creates (the real job's savepoints are covered by tests/worker/test_worker_api.py and the
real-stack replay in tests/hostile)."""

# ruff: noqa: ASYNC240 - tiny local directories, read in the test on purpose
from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from metricsflow.worker.app import create_app

TOKEN = "worker-secret"


class StandInRunner:
    """What the app's mutating routes use of a runner: a savepoint directory and triggers."""

    def __init__(self, savepoint_dir: Path) -> None:
        self.config = SimpleNamespace(savepoint_dir=savepoint_dir)
        self.job = SimpleNamespace(trigger_savepoint=self._savepoint)
        self.ids = itertools.count(1)
        self.stopped = False

    async def _savepoint(self) -> Any:
        n = next(self.ids)
        location = self.config.savepoint_dir / f"savepoint-{n}"
        location.mkdir(parents=True)
        (location / "_metadata").write_text("{}")
        return SimpleNamespace(
            checkpoint_id=n,
            location=str(location),
            is_savepoint=True,
            state_size=1,
            metadata=SimpleNamespace(trigger_timestamp_ns=n),
        )

    async def stop_with_savepoint(self) -> Any:
        self.stopped = True
        return await self._savepoint()


def client(runner: StandInRunner, **options: Any) -> httpx.AsyncClient:
    app = create_app(runner, **options)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://worker")


async def test_mutations_need_the_token_when_one_is_configured(tmp_path: Path) -> None:
    runner = StandInRunner(tmp_path)
    async with client(runner, api_token=TOKEN) as api:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            for method, path in (("POST", "/stop"), ("POST", "/savepoints")):
                response = await api.request(method, path, headers=headers)
                assert response.status_code == 401, (method, path, headers)
                assert "METRICSFLOW_API_TOKEN" in response.json()["detail"]
        assert not runner.stopped
        assert not list(tmp_path.iterdir())
        ok = await api.post("/stop", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200, ok.text
        assert runner.stopped


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Content-Type": "text/plain"},
        {"Content-Type": "application/x-www-form-urlencoded"},
        {"Content-Type": "multipart/form-data; boundary=x"},
    ],
)
async def test_requests_a_browser_sends_cross_site_are_refused_even_without_token(
    tmp_path: Path, headers: dict[str, str]
) -> None:
    runner = StandInRunner(tmp_path)
    async with client(runner) as api:
        response = await api.post("/stop", headers=headers)
    assert response.status_code in (403, 415), response.text
    assert not runner.stopped


async def test_the_cli_and_same_origin_requests_pass_without_token(tmp_path: Path) -> None:
    runner = StandInRunner(tmp_path)
    async with client(runner) as api:
        plain = await api.post("/savepoints")
        same = await api.post(
            "/savepoints",
            headers={"Origin": "http://worker", "Content-Type": "application/json"},
        )
    assert plain.status_code == 200, plain.text
    assert same.status_code == 200, same.text


async def test_savepoints_from_the_api_are_bounded_and_deletable(tmp_path: Path) -> None:
    runner = StandInRunner(tmp_path)
    async with client(runner, max_savepoints=3) as api:
        made = [(await api.post("/savepoints")).json()["location"] for _ in range(3)]
        refused = await api.post("/savepoints")
        assert refused.status_code == 409
        assert "DELETE /savepoints/<name>" in refused.json()["detail"]
        assert len(list(tmp_path.iterdir())) == 3
        gone = await api.delete(f"/savepoints/{Path(made[0]).name}")
        assert gone.status_code == 200, gone.text
        assert not Path(made[0]).exists()
        for bad in ("..", "checkpoints", "savepoint-9"):
            assert (await api.delete(f"/savepoints/{bad}")).status_code == 404
        again = await api.post("/savepoints")
        assert again.status_code == 200
        assert len(list(tmp_path.iterdir())) == 3
        # /stop is never refused for the count: an upgrade must be possible.
        assert (await api.post("/stop")).status_code == 200
