"""The schema revisions read from the migration scripts' own lines (what a worker checks
at start and with each heartbeat, without importing alembic) are alembic's."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobbalancer.db import migrate


def test_the_plain_reading_agrees_with_alembic() -> None:
    assert migrate._plain_chain() == migrate._alembic_revisions()
    assert migrate.head_revision() == migrate._alembic_revisions()[0]


def _script(versions: Path, revision: str, down: str) -> None:
    (versions / f"{revision}.py").write_text(f'revision = "{revision}"\ndown_revision = {down}\n')


def test_anything_but_one_plain_chain_is_left_to_alembic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    versions = tmp_path / "versions"
    versions.mkdir()
    monkeypatch.setattr(migrate, "MIGRATIONS", tmp_path)
    _script(versions, "a", "None")
    _script(versions, "b", '"a"')
    assert migrate._plain_chain() == ("b", frozenset({"a", "b"}))

    _script(versions, "c", '"a"')  # two heads
    assert migrate._plain_chain() is None

    (versions / "c.py").write_text('revision = "c"\ndown_revision = ("a", "b")\n')  # a merge
    assert migrate._plain_chain() is None
