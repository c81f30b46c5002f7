"""Jobs flowing with a notification target that never answers, against none:
``python -m bench.notify [--backend sqlite] [--jobs 1000] [--repeat 3]``.

Each round is a new cluster (a server, 2 workers x 2 slots) running ``--jobs`` jobs of
``echo hi`` submitted in batches: first with no notification target, then with a global
rule sending every ``done`` to a webhook on 127.0.0.1 that accepts connections and never
answers (each delivery waits out its 15 s timeout). Jobs/s from the database clock, and
the ratio; the notifications still pending show the deliveries were really stuck.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import sqlalchemy as sa
from tests.receivers import silent_server

from bench import throughput as tp
from bench.cluster import Cluster
from jobbalancer import outbox
from jobbalancer.db import schema


def one_round(backend: str, n: int, never: str | None) -> tuple[float, int]:
    """Jobs/s, and notifications pending at the end."""
    with Cluster(backend, workers=2, slots=2) as cluster:
        assert cluster.http is not None
        if never is not None:
            target = {"name": "never", "kind": "webhook", "url": never}
            cluster.http.post("/api/v1/notification-targets", json=target).raise_for_status()
            rule = {"on": ["done"], "target": "never"}
            cluster.http.post("/api/v1/notification-rules", json=rule).raise_for_status()
            time.sleep(outbox.TTL + 0.5)  # every process knows the rule by then
        run = tp.throughput(cluster, n, batch=True)
        with cluster.engine.connect() as conn:
            n_table = schema.notifications
            pending = conn.execute(
                sa.select(sa.func.count()).where(n_table.c.state == "pending")
            ).scalar_one()
        return run.rate, int(pending)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--backend", default="sqlite")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    plain, stuck, pending = [], [], []
    with silent_server() as never:
        for _ in range(args.repeat):
            plain.append(one_round(args.backend, args.jobs, None)[0])
            rate, left = one_round(args.backend, args.jobs, never)
            stuck.append(rate)
            pending.append(left)
    a, b = statistics.median(plain), statistics.median(stuck)
    print(f"\nnotifications, {args.backend}, {args.jobs} jobs, medians of {args.repeat}")
    runs = {"no target": (a, plain), "every job to a silent target": (b, stuck)}
    for label, (median, rates) in runs.items():
        each = " / ".join(f"{r:.0f}" for r in rates)
        print(f"  {label + ':':31}{median:8.1f} jobs/s  ({each})")
    print(f"  ratio: {b / a:.2f}; notifications pending at the end: {pending}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
