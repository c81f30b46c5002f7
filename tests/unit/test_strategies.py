"""The balancing strategies, as pure functions of (candidates, cursor) → worker."""

from __future__ import annotations

import collections

import pytest

from jobbalancer import balancer
from jobbalancer.balancer import Candidate


def cand(id: int, active: int = 0, max_jobs: int = 4, class_id: int = 1) -> Candidate:
    """A candidate worker named after its id."""
    return Candidate(
        id=id, name=f"w{id}", worker_class_id=class_id, max_jobs=max_jobs, active=active
    )


def test_every_setting_value_has_a_strategy() -> None:
    assert set(balancer.STRATEGIES) == {
        "round_robin", "least_loaded", "random", "fill_first", "binpack"
    }  # fmt: skip


def test_candidate_free_slots() -> None:
    assert cand(1, active=1, max_jobs=4).free == 3
    assert cand(1, active=4, max_jobs=4).free == 0


@pytest.mark.parametrize("name", sorted(balancer.STRATEGIES))
def test_a_single_candidate_is_always_chosen(name: str) -> None:
    only = cand(7, active=3)
    strategy = balancer.STRATEGIES[name]
    for cursor in (0, 3, 7, 99):
        assert strategy([only], cursor) is only


# -- round_robin --------------------------------------------------------------------------


def test_round_robin_takes_the_next_id_after_the_cursor() -> None:
    workers = [cand(2), cand(5), cand(9)]
    assert balancer.round_robin(workers, 0).id == 2
    assert balancer.round_robin(workers, 2).id == 5
    assert balancer.round_robin(workers, 3).id == 5  # a cursor between ids
    assert balancer.round_robin(workers, 5).id == 9


def test_round_robin_wraps_around_after_the_last_id() -> None:
    workers = [cand(2), cand(5), cand(9)]
    assert balancer.round_robin(workers, 9).id == 2
    assert balancer.round_robin(workers, 100).id == 2  # the last chosen worker went away


def test_round_robin_following_its_own_choices_visits_each_worker_in_turn() -> None:
    workers = [cand(1), cand(2), cand(3)]
    cursor, chosen = 0, []
    for _ in range(7):
        pick = balancer.round_robin(workers, cursor)
        chosen.append(pick.id)
        cursor = pick.id
    assert chosen == [1, 2, 3, 1, 2, 3, 1]


def test_round_robin_skips_a_worker_that_is_not_a_candidate() -> None:
    # Worker 2 is full, so the balancer does not offer it: after 1 comes 3.
    assert balancer.round_robin([cand(1), cand(3)], 1).id == 3


def test_round_robin_ignores_load() -> None:
    workers = [cand(1, active=0), cand(2, active=3)]
    assert balancer.round_robin(workers, 1).id == 2


# -- least_loaded -------------------------------------------------------------------------


def test_least_loaded_picks_the_lowest_active_to_max_ratio() -> None:
    workers = [
        cand(1, active=2, max_jobs=4),  # 0.50
        cand(2, active=3, max_jobs=10),  # 0.30: the most jobs, but the least loaded
        cand(3, active=1, max_jobs=2),  # 0.50
    ]
    assert balancer.least_loaded(workers, 0).id == 2


def test_least_loaded_uses_the_ratio_not_the_active_count() -> None:
    # Worker 1 runs fewer jobs but is fuller relative to its size.
    workers = [cand(1, active=1, max_jobs=2), cand(2, active=3, max_jobs=10)]
    assert balancer.least_loaded(workers, 0).id == 2


def test_least_loaded_breaks_ties_by_id() -> None:
    workers = [cand(8, active=1), cand(3, active=1), cand(5, active=1)]
    assert balancer.least_loaded(workers, 0).id == 3


def test_least_loaded_ignores_the_cursor() -> None:
    workers = [cand(1, active=0), cand(2, active=0)]
    assert balancer.least_loaded(workers, 1).id == 1
    assert balancer.least_loaded(workers, 2).id == 1


def test_least_loaded_prefers_an_idle_worker() -> None:
    workers = [cand(1, active=1, max_jobs=100), cand(2, active=0, max_jobs=1)]
    assert balancer.least_loaded(workers, 0).id == 2


# -- fill_first ---------------------------------------------------------------------------


def test_fill_first_packs_the_first_candidate() -> None:
    workers = [cand(1, active=3), cand(2, active=0), cand(3, active=0)]
    for cursor in (0, 1, 2, 3):
        assert balancer.fill_first(workers, cursor).id == 1


def test_fill_first_moves_on_once_the_first_is_full() -> None:
    # A full worker is no candidate: the next one by id is packed.
    assert balancer.fill_first([cand(2, active=1), cand(3)], 0).id == 2


# -- random -------------------------------------------------------------------------------


def test_random_only_returns_candidates_and_spreads_over_them() -> None:
    workers = [cand(1), cand(4), cand(6)]
    draws = 3000
    counts = collections.Counter(balancer.random_worker(workers, 0).id for _ in range(draws))
    assert set(counts) == {1, 4, 6}
    # Each expects 1000 with a standard deviation of about 26: these bounds never fail by chance.
    for worker_id, n in counts.items():
        assert 700 < n < 1300, (worker_id, counts)


def test_random_returns_the_candidate_object_itself() -> None:
    workers = [cand(1), cand(2)]
    for _ in range(50):
        chosen = balancer.random_worker(workers, 0)
        assert any(chosen is w for w in workers)
