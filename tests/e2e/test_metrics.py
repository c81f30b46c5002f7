"""End to end: a real worker runs jobs, and the server's /metrics counts their ends."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Cluster

pytestmark = pytest.mark.e2e
Factory = Any


def scrape(cluster: Cluster) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    r = cluster.api.get("/metrics")
    assert r.status_code == 200, r.text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def test_jobs_that_end_move_the_counters(make_cluster: Factory) -> None:
    # Given a server that counts a job's end at once, and a worker
    cluster: Cluster = make_cluster(server=False)
    cluster.env["JOBBALANCER_SERVER_METRICS_SETTLE"] = "0"
    cluster.start_server()
    cluster.start_worker("w1", "--allow-root", "--max-jobs", "2")
    default = {"class": "default"}

    def ended(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], state: str) -> float:
        key = ("jobbalancer_jobs_ended_total", frozenset({**default, "state": state}.items()))
        return samples[key]

    before = scrape(cluster)  # the first scrape starts the count
    assert (ended(before, "done"), ended(before, "failed")) == (0, 0)
    # The worker's own figures, from its heartbeat
    assert before[("jobbalancer_worker_cpus", frozenset({("worker", "w1")}))] >= 1
    assert before[("jobbalancer_worker_memory_bytes", frozenset({("worker", "w1")}))] > 0
    assert before[("jobbalancer_worker_slots", frozenset({("worker", "w1")}))] == 2
    # When one job succeeds and one fails
    ok, bad = cluster.submit(command="true"), cluster.submit(command="exit 2")
    assert cluster.wait_job(ok["id"])["state"] == "done"
    assert cluster.wait_job(bad["id"])["state"] == "failed"
    # Then the counters and histograms moved by exactly those two
    after = scrape(cluster)
    assert (ended(after, "done"), ended(after, "failed")) == (1, 1)
    for histogram in ("jobbalancer_job_run_seconds", "jobbalancer_job_wait_seconds"):
        assert after[(f"{histogram}_count", frozenset(default.items()))] == 2
    # And a scrape more counts nothing twice
    again = scrape(cluster)
    assert (ended(again, "done"), ended(again, "failed")) == (1, 1)
