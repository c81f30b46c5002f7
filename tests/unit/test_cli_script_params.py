"""The command line's part of typed parameters: `-p NAME=VALUE` by name, positional
values as before, and the examples `up` adds only to a fresh database."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from jobbalancer import db, scripts
from jobbalancer.cli import examples, up
from jobbalancer.cli.submit import arrange_params
from jobbalancer.scriptparams import parse_declaration


def test_named_values_for_declared_names_the_rest_by_position() -> None:
    names = ["input", "crf", "preset"]
    assert arrange_params(names, ["input=a.mp4", "crf=23"]) == {"input": "a.mp4", "crf": "23"}
    assert arrange_params(names, ["a.mp4", "preset=slow"]) == {"input": "a.mp4", "preset": "slow"}
    assert arrange_params(names, ["input=x=y"]) == {"input": "x=y"}
    # Nothing named: a list as given, exactly as before (also for NAME=VALUE of no
    # declared name, and for a script that declares nothing).
    assert arrange_params(names, ["a.mp4", "23"]) == ["a.mp4", "23"]
    assert arrange_params(names, ["--opt=1"]) == ["--opt=1"]
    assert arrange_params([], ["crf=23", "x"]) == ["crf=23", "x"]


@pytest.mark.parametrize(
    "params",
    [["crf=1", "crf=2"], ["a.mp4", "input=b.mp4"], ["a", "b", "c", "d", "crf=1"]],
)
def test_a_parameter_given_twice_or_too_many_is_a_usage_error(params: list[str]) -> None:
    with pytest.raises(typer.Exit) as info:
        arrange_params(["input", "crf", "preset"], params)
    assert info.value.exit_code == 2


def test_the_examples_declarations_are_valid() -> None:
    for example in examples.EXAMPLES:
        assert parse_declaration(example["parameters"]), example["name"]


def test_up_adds_the_examples_only_to_a_fresh_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    assert up._prepare_database(url) is not None
    engine = db.connect(url)
    try:
        with db.write(engine) as conn:
            found = scripts.list_all(conn)
            assert sorted(s.name for s in found) == sorted(e["name"] for e in examples.EXAMPLES)
            assert all(s.parameters for s in found)
            scripts.delete(conn, found[0].id)
        # The next start: not fresh (the admin exists), so a deleted example stays deleted.
        assert up._prepare_database(url) is None
        with db.read(engine) as conn:
            assert len(scripts.list_all(conn)) == len(examples.EXAMPLES) - 1
    finally:
        engine.dispose()


def test_no_examples_skips_them(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bare.db'}"
    assert up._prepare_database(url, examples=False) is not None
    engine = db.connect(url)
    try:
        with db.read(engine) as conn:
            assert scripts.list_all(conn) == []
    finally:
        engine.dispose()
