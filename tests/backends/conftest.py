"""Factories for the tests of the core on every backend: jobs and workers, made through the
code under test.

They clean up with the database: every test has its own (the ``engine`` fixture), dropped
when the test ends, and everything a factory made goes with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from jobbalancer import balancer, db, jobs
from jobbalancer import registry as workers

DEFAULT_CLASS = 1  # the class the first migration puts in

JobFactory = Callable[..., int]
WorkerFactory = Callable[..., int]


@pytest.fixture
def job_factory(engine: sa.Engine) -> JobFactory:
    """make(submit=False, user=(7, "alice"), **spec) → the id of a new job.

    The job runs ``echo hello`` in the default class unless ``spec`` says otherwise. It is
    created waiting, whatever workers there are; with ``submit=True`` it goes through the
    balancer as a submission does: assigned at once when a worker has a free slot (and
    occupied if it needs one in realtime and none is free).
    """

    def make(
        *, submit: bool = False, user: tuple[int | None, str | None] = (7, "alice"), **spec: Any
    ) -> int:
        spec.setdefault("command", "echo hello")
        spec.setdefault("worker_class_id", DEFAULT_CLASS)
        create = balancer.submit if submit else jobs.create
        with db.write(engine) as conn:
            (job_id,) = create(conn, [jobs.Spec(**spec)], *user)
        return job_id

    return make


@pytest.fixture
def worker_factory(engine: sa.Engine) -> WorkerFactory:
    """make(name, worker_class="default", max_jobs=None) → the id of a new online worker."""

    def make(name: str, worker_class: str = "default", max_jobs: int | None = None) -> int:
        with db.write(engine) as conn:
            worker_id, _ = workers.register(
                conn, name=name, host="test-host", worker_class=worker_class, max_jobs=max_jobs,
                pid=4242, version="test", stats=workers.Stats(),
            )  # fmt: skip
        return worker_id

    return make
