"""The web UI and the job list API with 100 000 jobs in SQLite.

A fresh SQLite database gets 100 000 jobs (bulk inserted: mostly done, some failed,
killed and timed out, a few running and waiting, over 10 workers, 3 users and 30 days)
and the app answers in-process (no network, one client, so the figures are the server's
own time: routing, queries, templates). Each page is asked for several times; the table
shows the median and the slowest.

    python -m bench.web_pages [--jobs 100000] [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import tempfile
import time
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from argon2 import PasswordHasher

from jobbalancer import auth, db
from jobbalancer import registry as workers
from jobbalancer.app import create_app
from jobbalancer.db import schema
from jobbalancer.settings import Settings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx.*", category=UserWarning)
    from fastapi.testclient import TestClient

J = schema.jobs
WORKERS = 10
USERS = ("alice", "bob", "ci")
STATES = ["done"] * 85 + ["failed"] * 8 + ["killed"] * 3 + ["timeout"] * 2 + ["lost"] * 2
COMMANDS = (
    "ffmpeg -i /data/in/{i}.mp4 -c:v libvpx-vp9 /data/out/{i}.webm",
    "make -C /src/project-{p} test",
    "python3 /opt/etl/load.py --day {d}",
    "rsync -a /srv/shard-{p}/ backup:/srv/shard-{p}/",
)


def fill(engine: sa.Engine, count: int) -> None:
    """``count`` finished jobs (and a few live ones) in batches, oldest first."""
    rng = random.Random(42)
    with db.write(engine) as conn:
        worker_ids = [
            workers.register(
                conn, name=f"node-{n}", host=f"node-{n}", worker_class="default",
                max_jobs=4, pid=1000 + n, version="bench", stats=workers.Stats(),
            )[0]
            for n in range(WORKERS)
        ]  # fmt: skip
        users = [auth.create_user(conn, name, "submitter") for name in USERS]
    start = datetime.now(UTC) - timedelta(days=30)
    step = timedelta(days=30) / count
    batch: list[dict[str, Any]] = []
    for i in range(count):
        live = i >= count - 20  # the newest few still run or wait
        state = ("running" if i % 2 else "waiting") if live else rng.choice(STATES)
        created = start + step * i
        user = rng.choice(users)
        ran = state != "waiting"
        finished = state not in ("running", "waiting")
        batch.append({
            "state": state,
            "command": rng.choice(COMMANDS).format(i=i, p=i % 97, d=i % 365),
            "params": [], "env": {}, "labels": {}, "worker_class_id": 1,
            "need_realtime": False, "priority": 0, "retries": 0, "attempt": 1,
            "kill_requested": False, "output_bytes": rng.randint(0, 50_000),
            "user_id": user.id, "user_name": user.name,
            "worker_id": rng.choice(worker_ids) if ran else None,
            "exit_code": (0 if state == "done" else 1) if finished else None,
            "created_at": created,
            "assigned_at": created if ran else None,
            "started_at": created + timedelta(milliseconds=50) if ran else None,
            "finished_at": created + timedelta(seconds=rng.randint(1, 600)) if finished else None,
        })  # fmt: skip
        if len(batch) == 5000:
            _insert(engine, batch)
            batch = []
    if batch:
        _insert(engine, batch)


def _insert(engine: sa.Engine, rows: list[dict[str, Any]]) -> None:
    with db.write(engine) as conn:
        conn.execute(sa.insert(J), rows)


def timed(client: TestClient, url: str, runs: int, **kwargs: Any) -> tuple[float, float, int]:
    """Median and slowest of ``runs`` answers, in milliseconds, and the last size."""
    client.get(url, **kwargs)  # warm up caches and templates
    times, size = [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        r = client.get(url, **kwargs)
        times.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200, (url, r.status_code, r.text[:300])
        size = len(r.content)
    return statistics.median(times), max(times), size


def _deep_cursor(client: TestClient, key: str, pages: int) -> str:
    """The cursor of page ``pages`` of the API list (500 a page): far back in the table."""
    cursor = ""
    for _ in range(pages):
        r = client.get("/api/v1/jobs", params={"limit": 500, "cursor": cursor or None},
                       headers={"Authorization": f"Bearer {key}"})  # fmt: skip
        cursor = r.json()["next_cursor"]
    return cursor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    auth._hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    with tempfile.TemporaryDirectory(prefix="jb-bench-web-") as tmp:
        path = Path(tmp) / "jobbalancer.db"
        engine = db.connect(f"sqlite:///{path}")
        db.upgrade(engine)
        t0 = time.perf_counter()
        app = create_app(Settings(), engine, supervise=False)
        admin, password, key = app.state.first_admin
        fill(engine, args.jobs)
        print(f"{args.jobs} jobs inserted in {time.perf_counter() - t0:.1f}s "
              f"({os.path.getsize(path) / 1e6:.0f} MB)")  # fmt: skip
        with TestClient(app, follow_redirects=False) as client:
            run(client, admin.name, password, key, args)
        engine.dispose()


def run(client: TestClient, name: str, password: str, key: str, args: argparse.Namespace) -> None:
    form = client.get("/login").text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form)
    assert csrf
    r = client.post("/login", data={"name": name, "password": password, "csrf_token": csrf[1]})
    assert r.status_code == 303, r.text
    api = {"headers": {"Authorization": f"Bearer {key}"}}
    deep = _deep_cursor(client, key, pages=(args.jobs * 9 // 10) // 500)
    newest = client.get("/api/v1/jobs", params={"limit": 1}, **api).json()["items"][0]["id"]
    cases = [
        ("web  /  (dashboard)", "/", {}),
        ("web  /jobs", "/jobs", {}),
        ("web  /jobs/table (the 3 s refresh)", "/jobs/table", {}),
        ("web  /jobs?state=done (85% of jobs)", "/jobs/table?state=done", {}),
        ("web  /jobs?state=failed", "/jobs/table?state=failed", {}),
        (
            "web  /jobs?state=failed,timeout,killed,lost",
            "/jobs/table?state=failed,timeout,killed,lost",
            {},
        ),
        ("web  /jobs?state=waiting", "/jobs/table?state=waiting", {}),
        ("web  /jobs?worker=node-3", "/jobs/table?worker=node-3", {}),
        ("web  /jobs?user=bob", "/jobs/table?user=bob", {}),
        ("web  /jobs?q=project-42 (text)", "/jobs/table?q=project-42", {}),
        ("web  /jobs?q=no-such-text (text, no match)", "/jobs/table?q=no-such-text", {}),
        ("web  /jobs, page 90% deep", f"/jobs/table?cursor={deep}", {}),
        ("web  /jobs/{id}", f"/jobs/{newest}", {}),
        ("api  /api/v1/jobs", "/api/v1/jobs", api),
        ("api  /api/v1/jobs?state=failed", "/api/v1/jobs?state=failed", api),
        ("api  /api/v1/jobs?q=project-42", "/api/v1/jobs?q=project-42", api),
        ("api  /api/v1/jobs?q=no-such-text", "/api/v1/jobs?q=no-such-text", api),
        ("api  /api/v1/jobs, page 90% deep", f"/api/v1/jobs?cursor={deep}", api),
        ("api  /api/v1/stats", "/api/v1/stats", api),
    ]
    print(f"\n{'page':46} {'median ms':>10} {'max ms':>8} {'bytes':>8}")
    for label, url, kwargs in cases:
        median, slowest, size = timed(client, url, args.runs, **kwargs)
        print(f"{label:46} {median:10.1f} {slowest:8.1f} {size:8d}")


if __name__ == "__main__":
    main()
