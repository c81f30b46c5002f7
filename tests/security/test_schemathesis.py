"""Schemathesis over /openapi.json with a valid admin key: whatever it sends, the server
answers without a 5xx, and every answer matches the schema the server publishes.

Bounded for CI: MAX_EXAMPLES per operation, derandomized (the same examples every run),
the app in-process on SQLite, a fresh database per operation (so a DELETE cannot starve
the others), no workers (jobs submitted here wait; none runs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import hypothesis
import schemathesis
from schemathesis import checks

from jobbalancer import db, vault
from jobbalancer.app import create_app
from jobbalancer.settings import Settings

MAX_EXAMPLES = 12
CHECKS = [
    checks.not_a_server_error,
    checks.response_schema_conformance,
    checks.content_type_conformance,
]


def _fresh_app(make_database_url: Callable[..., str]) -> tuple[Any, str, Any]:
    engine = db.connect(make_database_url("sqlite", migrated=True))
    app = create_app(Settings(secret_key=vault.new_key_text()), engine, supervise=False)
    return app, app.state.first_admin[2], engine


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _fuzz(operation: Any, key: str, mode: schemathesis.GenerationMode) -> int:
    """Run MAX_EXAMPLES generated requests against one operation; how many ran."""
    ran = 0

    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    )
    def run(case: schemathesis.Case) -> None:
        nonlocal ran
        ran += 1
        case.call_and_validate(headers=_auth(key), checks=CHECKS)

    run()
    return ran


def test_api_answers_every_generated_request_within_its_schema(
    make_database_url: Callable[..., str], cheap_hashing: None
) -> None:
    app, key, engine = _fresh_app(make_database_url)
    operations = [
        (r.ok().method.upper(), r.ok().path)
        for r in schemathesis.openapi.from_asgi(
            "/openapi.json", app, headers=_auth(key)
        ).get_all_operations()
    ]
    engine.dispose()
    assert len(operations) >= 30, operations
    failures: list[str] = []
    examples = 0
    for method, path in operations:
        app, key, engine = _fresh_app(make_database_url)
        try:
            schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=_auth(key))
            for mode in schemathesis.GenerationMode:  # valid requests, and invalid ones
                try:
                    examples += _fuzz(schema[path][method], key, mode)
                except hypothesis.errors.Unsatisfiable:
                    assert mode is schemathesis.GenerationMode.NEGATIVE  # nothing to get wrong
                except Exception as exc:
                    failures.append(f"{method} {path} ({mode.value}): {exc}")
        finally:
            engine.dispose()
    print(f"\nschemathesis: {examples} examples over {len(operations)} operations")
    assert not failures, "\n\n".join(failures)
