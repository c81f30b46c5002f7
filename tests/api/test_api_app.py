"""The application itself: its own engine and lifespan, the first admin, the wake-up hook,
and answers when the database is gone."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import sqlalchemy as sa
from apihelpers import TestClient

from jobbalancer.app import create_app
from jobbalancer.settings import Settings


def test_own_engine_first_admin_and_supervisor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(data_dir=str(tmp_path))
    app = create_app(settings)
    user, password, key = app.state.first_admin
    printed = capsys.readouterr().out
    assert user.name in printed and password in printed and key in printed
    with TestClient(app, headers={"Authorization": f"Bearer {key}"}) as client:
        assert client.get("/healthz").json()["database"] == "ok"
        assert client.get("/api/v1/me").json()["role"] == "admin"
    # A second start on the same database creates nobody and prints nothing.
    again = create_app(settings, supervise=False)
    assert again.state.first_admin is None
    assert "API key" not in capsys.readouterr().out
    again.state.engine.dispose()

    # With the database gone: 503, as JSON, for the health check and for any route.
    again.state.engine = sa.create_engine(
        "postgresql+psycopg://nobody@127.0.0.1:1/none", connect_args={"connect_timeout": 2}
    )
    client = TestClient(again, headers={"Authorization": f"Bearer {key}"})
    r = client.get("/healthz")
    assert r.status_code == 503 and r.json()["database"] == "unavailable"
    r = client.get("/api/v1/jobs")
    assert r.status_code == 503 and r.json()["error"] == "database_unavailable"


def test_every_route_is_named_once_in_the_openapi_document(tmp_path: Path) -> None:
    """A router included twice served its routes twice (the second copy never reached)
    and gave the OpenAPI document duplicate operation ids, which FastAPI warns of."""
    app = create_app(Settings(data_dir=str(tmp_path)), supervise=False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            document = app.openapi()
        ids = [op["operationId"] for path in document["paths"].values() for op in path.values()]
        assert len(ids) == len(set(ids)) and len(ids) > 50
    finally:
        app.state.engine.dispose()
