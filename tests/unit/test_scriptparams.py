"""Typed script parameters: declarations checked, values checked by every type and rule,
by name and by position, defaults, and the argv and secret_args they make."""

from __future__ import annotations

from typing import Any

import pytest

from jobbalancer import errors
from jobbalancer.scriptparams import Param, from_stored, parse_declaration, resolve_params

TRANSCODE = [
    {"name": "input", "type": "string", "required": True, "help": "the file"},
    {"name": "crf", "type": "int", "min": 0, "max": 51, "default": 23},
]


def declared(*items: dict[str, Any]) -> tuple[Param, ...]:
    return parse_declaration(list(items))


def refused(raw: Any) -> errors.InvalidInput:
    with pytest.raises(errors.InvalidInput) as info:
        parse_declaration(raw)
    return info.value


# -- declarations -----------------------------------------------------------------------------


def test_a_declaration_is_read_and_written_back_with_the_keys_that_say_something() -> None:
    params = parse_declaration(TRANSCODE)
    assert [p.to_json() for p in params] == [
        {"name": "input", "type": "string", "required": True, "help": "the file"},
        {"name": "crf", "type": "int", "required": False, "default": 23, "min": 0, "max": 51},
    ]
    assert parse_declaration(None) == ()
    assert parse_declaration([]) == ()
    # Read back from the column as it was checked.
    assert from_stored([p.to_json() for p in params]) == params
    assert from_stored(None) == ()


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        ({"name": "x"}, "parameters", "must be a list"),
        (["x"], "parameters.0", "must be an object"),
        ([{"name": "x"}, {"name": "X"}], "parameters.1.name", "declared twice"),
        ([{"name": "1x"}], "parameters.0.name", "starting with a letter"),
        ([{"name": "a b"}], "parameters.0.name", "letters, digits"),
        ([{"name": "x", "type": "date"}], "parameters.0.type", "one of string, int"),
        ([{"name": "x", "colour": 1}], "parameters.0.colour", "unknown key"),
        ([{"name": "x", "type": "choice"}], "parameters.0.values", "needs a list"),
        ([{"name": "x", "type": "choice", "values": ["a", "a"]}], "parameters.0.values", "twice"),
        ([{"name": "x", "values": ["a"]}], "parameters.0.values", "only choice"),
        ([{"name": "x", "type": "int", "regex": "a"}], "parameters.0.regex", "only string"),
        ([{"name": "x", "regex": "(a"}], "parameters.0.regex", "not a valid RE2"),
        ([{"name": "x", "regex": r"(a)\1"}], "parameters.0.regex", "not a valid RE2"),
        ([{"name": "x", "regex": "a" * 1001}], "parameters.0.regex", "at most 1000"),
        ([{"name": "x", "regex": "a\x00"}], "parameters.0.regex", "NUL"),
        ([{"name": "x", "help": "\ud800"}], "parameters.0.help", "lone surrogate"),
        ([{"name": "x", "type": "choice", "values": ["\x00"]}], "parameters.0.values", "NUL"),
        ([{"name": "x", "min": 1}], "parameters.0.min", "only int and float"),
        ([{"name": "x", "type": "int", "min": 1.5}], "parameters.0.min", "whole number"),
        ([{"name": "x", "type": "int", "min": 5, "max": 1}], "parameters.0.max", "less than"),
        ([{"name": "x", "type": "int", "max": 5, "default": 6}], "parameters.0.default", "≤ 5"),
        ([{"name": "x", "regex": "[a-z]+", "default": "A"}], "parameters.0.default", "match"),
        (
            [{"name": "x", "type": "choice", "values": ["a"], "default": "b"}],
            "parameters.0.default",
            "one of: a",
        ),
        ([{"name": "x", "type": "bool", "default": "maybe"}], "parameters.0.default", "true or"),
        ([{"name": "x", "required": True, "default": "a"}], "parameters.0.default", "required"),
        ([{"name": "x", "required": "yes"}], "parameters.0.required", "true or false"),
        ([{"name": f"p{i}"} for i in range(101)], "parameters", "at most 100"),
    ],
)
def test_a_bad_declaration_names_the_key_at_fault(raw: Any, field: str, words: str) -> None:
    exc = refused(raw)
    assert exc.field == field
    assert words in exc.message
    assert exc.message.startswith(field)


def test_a_catastrophic_pattern_is_matched_in_linear_time() -> None:
    # (a+)+$ takes exponential time in a backtracking engine; RE2 has none.
    [p] = declared({"name": "x", "regex": "(a+)+b"})
    with pytest.raises(errors.InvalidInput, match="must match"):
        resolve_params([p], {"x": "a" * 100_000})


# -- values -------------------------------------------------------------------------------------


def test_by_name_in_declared_order_with_defaults() -> None:
    params = parse_declaration(TRANSCODE)
    assert resolve_params(params, {"crf": 30, "input": "a.mp4"}) == (["a.mp4", "30"], {})
    assert resolve_params(params, {"input": "a.mp4"}) == (["a.mp4", "23"], {})
    assert resolve_params(params, {"input": "a.mp4", "crf": None}) == (["a.mp4", "23"], {})


def test_by_position_each_checked_by_its_position() -> None:
    params = parse_declaration(TRANSCODE)
    assert resolve_params(params, ["a.mp4", "30"]) == (["a.mp4", "30"], {})
    assert resolve_params(params, ["a.mp4"]) == (["a.mp4", "23"], {})
    with pytest.raises(errors.InvalidInput) as info:
        resolve_params(params, ["a.mp4", "52"])
    assert info.value.field == "params.1"
    assert info.value.message == "params.1 (crf): must be ≤ 51"
    with pytest.raises(errors.InvalidInput, match="declares 2 parameters") as info:
        resolve_params(params, ["a", "1", "extra"])
    assert info.value.field == "params"


@pytest.mark.parametrize(
    ("given", "field", "message"),
    [
        ({"crf": 23}, "params.input", "params.input: is required"),
        ({"input": ""}, "params.input", "params.input: is required"),
        ({"input": "a", "crf": 52}, "params.crf", "params.crf: must be ≤ 51"),
        ({"input": "a", "crf": -1}, "params.crf", "params.crf: must be ≥ 0"),
        ({"input": "a", "crf": "x"}, "params.crf", "params.crf: must be an integer"),
        ({"input": "a", "crf": 2.5}, "params.crf", "params.crf: must be an integer"),
        ({"input": "a", "crf": True}, "params.crf", "params.crf: must be an integer"),
        ({"input": "a", "speed": 1}, "params.speed", "unknown parameter"),
    ],
)
def test_a_bad_value_names_the_parameter_and_the_rule(
    given: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(errors.InvalidInput) as info:
        resolve_params(parse_declaration(TRANSCODE), given, "jobs.3.")
    assert info.value.field == f"jobs.3.{field}"
    assert message in info.value.message
    assert info.value.message.startswith("jobs.3.params")


@pytest.mark.parametrize(
    ("decl", "value", "argv"),
    [
        ({"type": "string"}, "a b; rm -rf /", "a b; rm -rf /"),
        ({"type": "string"}, 12, "12"),
        ({"type": "string", "regex": "[a-z]+\\.mp4"}, "in.mp4", "in.mp4"),
        ({"type": "int"}, "23", "23"),
        ({"type": "int"}, " -7 ", "-7"),
        ({"type": "int"}, 4.0, "4"),
        ({"type": "float"}, "0.5", "0.5"),
        ({"type": "float"}, 2, "2.0"),
        ({"type": "float", "min": 0, "max": 1}, "1e-3", "0.001"),
        ({"type": "bool"}, True, "true"),
        ({"type": "bool"}, "no", "false"),
        ({"type": "bool"}, "ON", "true"),
        ({"type": "bool"}, 0, "false"),
        ({"type": "choice", "values": ["md5", "sha256"]}, "sha256", "sha256"),
        ({"type": "choice", "values": ["1", "2"]}, 2, "2"),
        ({"type": "secret"}, "prod-db", "prod-db"),
    ],
)
def test_each_type_takes_its_values(decl: dict[str, Any], value: Any, argv: str) -> None:
    params = declared({"name": "p", **decl})
    assert resolve_params(params, {"p": value})[0] == [argv]
    assert resolve_params(params, [value])[0] == [argv]


@pytest.mark.parametrize(
    ("decl", "value", "rule"),
    [
        ({"type": "string", "regex": "[a-z]+"}, "abc1", "must match [a-z]+"),
        ({"type": "string"}, True, "must be a text"),
        ({"type": "string"}, "a\x00b", "NUL"),
        ({"type": "string"}, "x" * (128 * 1024), "128 KiB"),
        ({"type": "int"}, "1_000", "must be an integer"),
        ({"type": "int"}, "٣", "must be an integer"),
        ({"type": "float"}, "nan", "must be a number"),
        ({"type": "float"}, "inf", "must be a number"),
        ({"type": "float"}, "1,5", "must be a number"),
        ({"type": "float", "max": 1.5}, 1.6, "must be ≤ 1.5"),
        ({"type": "bool"}, "maybe", "must be true or false"),
        ({"type": "bool"}, 2, "must be true or false"),
        ({"type": "choice", "values": ["md5", "sha256"]}, "MD5", "must be one of: md5, sha256"),
        ({"type": "secret"}, "a\nb", "must be the name of a secret"),
        ({"type": "secret"}, 5, "must be the name of a secret"),
    ],
)
def test_each_rule_refuses_what_breaks_it(decl: dict[str, Any], value: Any, rule: str) -> None:
    params = declared({"name": "p", **decl})
    with pytest.raises(errors.InvalidInput) as info:
        resolve_params(params, {"p": value})
    assert info.value.field == "params.p"
    assert rule in info.value.message


def test_an_optional_parameter_without_a_value_keeps_its_place() -> None:
    params = declared(
        {"name": "a", "type": "string"},
        {"name": "flag", "type": "bool"},
        {"name": "n", "type": "int"},
        {"name": "z", "type": "float", "default": 1.5},
    )
    assert resolve_params(params, {"n": 3}) == (["", "false", "3", "1.5"], {})
    assert resolve_params(params, []) == (["", "false", "", "1.5"], {})


def test_secret_parameters_keep_the_name_in_argv_and_map_its_index() -> None:
    params = declared(
        {"name": "host", "type": "string", "default": "db1"},
        {"name": "password", "type": "secret", "required": True},
        {"name": "token", "type": "secret", "default": "ci-token"},
        {"name": "other", "type": "secret"},
    )
    argv, secret_args = resolve_params(params, {"password": "prod-db"})
    assert argv == ["db1", "prod-db", "ci-token", ""]
    assert secret_args == {1: "prod-db", 2: "ci-token"}
    argv, secret_args = resolve_params(params, ["db2", " prod-db ", "", "x"])
    assert argv == ["db2", "prod-db", "ci-token", "x"]
    assert secret_args == {1: "prod-db", 2: "ci-token", 3: "x"}
