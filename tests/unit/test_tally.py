"""The tallies' arithmetic: which bucket an observation falls in, cumulative buckets."""

from __future__ import annotations

from collections import defaultdict

import pytest

from jobbalancer import tally


@pytest.mark.parametrize(
    ("seconds", "label"),
    [
        (0.0, "0.1"),
        (0.1, "0.1"),  # a bound belongs to its own bucket (le: less or equal)
        (0.1000001, "0.5"),
        (3, "5.0"),
        (60, "60.0"),
        (61, "120.0"),
        (86400, "86400.0"),
        (86400.5, "+Inf"),
        (10**9, "+Inf"),
    ],
)
def test_bucket(seconds: float, label: str) -> None:
    assert tally.bucket(seconds) == label


def test_observations_make_cumulative_buckets_and_a_sum() -> None:
    adds: defaultdict[tally.Key, float] = defaultdict(float)
    for seconds in (0.05, 3, 3, 4000, 10**6, -2):  # a negative time counts as zero
        tally.observe(adds, tally.RUN, "gpu", seconds)
    h = tally.histogram(adds, tally.RUN, "gpu")
    buckets = dict(h.buckets)
    assert [label for label, _ in h.buckets][-1] == "+Inf"
    assert len(h.buckets) == len(tally.BUCKETS) + 1
    assert (buckets["0.1"], buckets["2.5"], buckets["5.0"], buckets["3600.0"]) == (2, 2, 4, 4)
    assert (buckets["7200.0"], buckets["86400.0"], buckets["+Inf"]) == (5, 5, 6)
    assert h.count == 6 and h.sum == pytest.approx(0.05 + 3 + 3 + 4000 + 10**6)
    counts = [n for _, n in h.buckets]
    assert counts == sorted(counts)  # never decreasing
    assert tally.histogram(adds, tally.WAIT, "gpu").count == 0  # another histogram


def test_buckets_are_ascending() -> None:
    assert list(tally.BUCKETS) == sorted(set(tally.BUCKETS))
