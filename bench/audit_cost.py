"""What the audit log costs on the hot submit path: SQL statements per submission (one
job; a batch of 100) through the HTTP API, in-process, on each backend, and how many of
them are the audit log's. Counts, not times: they do not depend on the machine's load.

    python -m bench.audit_cost [--backend sqlite,postgresql,mysql]

Run on a tree without the audit log, it prints the same figures with 0 audit statements
(how "before" was measured).
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from argon2 import PasswordHasher

from bench.cluster import Database
from jobbalancer import auth, db
from jobbalancer import registry as workers
from jobbalancer.app import create_app
from jobbalancer.settings import Settings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx.*", category=UserWarning)
    from fastapi.testclient import TestClient


@contextmanager
def counting(engine: sa.Engine) -> Iterator[list[str]]:
    seen: list[str] = []

    def record(*args: Any) -> None:
        seen.append(str(args[2]))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def measure(url: str) -> dict[str, tuple[int, int]]:
    """{case: (statements, audit statements)} for a warm server with one worker."""
    auth._hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    engine = db.connect(url)
    db.upgrade(engine)
    try:
        app = create_app(Settings(), engine, supervise=False)
        with db.write(engine) as conn:
            stats = workers.Stats(
                load=0.0, cpu_count=1, memory_total=1 << 30, memory_available=1 << 29
            )
            workers.register(
                conn, name="w", host="h", worker_class="default", max_jobs=1000, pid=1,
                version="bench", stats=stats,
            )  # fmt: skip
        first = app.state.first_admin
        client = TestClient(app, headers={"Authorization": f"Bearer {first[2]}"})
        cases = {
            "submit 1 job": ("/api/v1/jobs", {"command": "true"}),
            "submit a batch of 100": ("/api/v1/jobs/batch",
                                      {"jobs": [{"command": "true"}] * 100}),
        }  # fmt: skip
        found = {}
        for name, (path, body) in cases.items():
            client.post(path, json=body)  # warm: the key verified, caches filled
            with counting(engine) as seen:
                r = client.post(path, json=body)
            assert r.status_code == 201, r.text
            found[name] = (len(seen), sum("audit_log" in sql for sql in seen))
        client.close()
        return found
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="sqlite,postgresql,mysql")
    args = parser.parse_args()
    print(f"{'backend':<12} {'case':<24} {'statements':>10} {'of them audit':>14}")
    for backend in args.backend.split(","):
        with tempfile.TemporaryDirectory() as tmp, Database(backend, Path(tmp)) as url:
            for case, (total, audit) in measure(url).items():
                print(f"{backend:<12} {case:<24} {total:>10} {audit:>14}")


if __name__ == "__main__":
    main()
