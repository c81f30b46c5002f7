"""Typed script parameters: what a stored script declares it takes, and the values a
submission gives checked against it and turned into the script's argv.

A declaration is a list of parameters, each ``{"name", "type", "required", "default",
"regex", "min", "max", "values", "help"}``; types are ``string``, ``int``, ``float``,
``bool``, ``choice`` (one of ``values``) and ``secret`` (the name of a stored secret).
Values come by name (``{"crf": 23}``) or by position (``["a.mp4", "23"]``) and reach the
script as argv entries in declared order: always one per declared parameter, so ``$2`` is
always the second one (an optional parameter given no value and without a default is
``""``). ``bool`` is ``true`` or ``false``; ``int`` and ``float`` are written the way
Python writes them (``23``, ``0.5``).

Regular expressions are RE2's (Go's syntax: no backreferences or lookaround), matched
against the whole value. RE2 runs in time linear in the value's length whatever the
pattern, so no pattern an operator writes can stall the server (Python's ``re`` has no
timeout, and a pattern such as ``(a+)+$`` takes exponential time there).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jobbalancer import errors, refs

TYPES = ("string", "int", "float", "bool", "choice", "secret")
MAX_PARAMETERS = 100
MAX_REGEX_CHARS = 1000
MAX_HELP_CHARS = 1000
MAX_CHOICES = 200
MAX_CHOICE_CHARS = 1000
# Linux refuses a single argv string longer than this (MAX_ARG_STRLEN).
MAX_VALUE_BYTES = 128 * 1024 - 1
# Used with fullmatch: usable as a form field, on a command line as NAME=VALUE, in a URL.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
_INT = re.compile(r"[+-]?[0-9]{1,30}")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
_KEYS = ("name", "type", "required", "default", "regex", "min", "max", "values", "help")
Value = str | int | float | bool


@dataclass(frozen=True)
class Param:
    """One declared parameter, checked."""

    name: str
    type: str
    required: bool = False
    default: Value | None = None
    regex: str | None = None
    min: int | float | None = None
    max: int | float | None = None
    values: tuple[str, ...] = ()
    help: str = ""

    def to_json(self) -> dict[str, Any]:
        """As stored and shown: only the keys that say something."""
        out: dict[str, Any] = {"name": self.name, "type": self.type, "required": self.required}
        for key in ("default", "regex", "min", "max"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.type == "choice":
            out["values"] = list(self.values)
        if self.help:
            out["help"] = self.help
        return out

    def rules(self) -> str:
        """A short text of its rules, for tables and forms: ``0 ≤ n ≤ 51``, ``a | b``."""
        parts = []
        if self.type == "choice":
            parts.append(" | ".join(self.values))
        if self.regex is not None:
            parts.append(f"matches {self.regex}")
        if self.min is not None and self.max is not None:
            parts.append(f"{self.min} to {self.max}")
        elif self.min is not None:
            parts.append(f"≥ {self.min}")
        elif self.max is not None:
            parts.append(f"≤ {self.max}")
        return "; ".join(parts)


class _Bad(ValueError):
    """A rule a value broke; the message follows the field's name."""


# -- declarations ---------------------------------------------------------------------------


def parse_declaration(raw: Any, field: str = "parameters") -> tuple[Param, ...]:
    """A declaration as given (JSON: a list of objects) checked; InvalidInput naming the
    key at fault (``parameters.1.default``) otherwise. None is no declaration."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise errors.InvalidInput(f"{field}: must be a list of parameters", field=field)
    if len(raw) > MAX_PARAMETERS:
        raise errors.InvalidInput(f"{field}: at most {MAX_PARAMETERS} parameters", field=field)
    declared: list[Param] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        where = f"{field}.{i}"
        if not isinstance(item, dict):
            raise errors.InvalidInput(
                f"{where}: must be an object with a name and a type", field=where
            )
        try:
            param = _parse_one(item)
        except _Bad as exc:
            key, _, message = str(exc).partition(": ")
            raise errors.InvalidInput(f"{where}.{key}: {message}", field=f"{where}.{key}") from None
        if param.name.casefold() in seen:
            raise errors.InvalidInput(
                f"{where}.name: {param.name!r} is declared twice (names are compared "
                "ignoring case)",
                field=f"{where}.name",
            )
        seen.add(param.name.casefold())
        declared.append(param)
    return tuple(declared)


def from_stored(raw: Any) -> tuple[Param, ...]:
    """A declaration as stored: checked when saved, so read as it is (checking it again
    cost about 40 µs a parameter on every read of the script, every submission)."""
    if not raw:
        return ()
    return tuple(
        Param(
            name=item["name"],
            type=item["type"],
            required=bool(item.get("required")),
            default=item.get("default"),
            regex=item.get("regex"),
            min=item.get("min"),
            max=item.get("max"),
            values=tuple(item.get("values") or ()),
            help=item.get("help") or "",
        )
        for item in raw
    )


def _parse_one(item: dict[str, Any]) -> Param:
    """One parameter; _Bad("key: message") for the first key at fault."""
    for key in item:
        if key not in _KEYS:
            raise _Bad(f"{key}: unknown key (a parameter has {', '.join(_KEYS)})")
    name = item.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise _Bad(
            "name: must be 1 to 64 letters, digits, '_' or '-', starting with a letter or '_'"
        )
    kind = item.get("type", "string")
    if kind not in TYPES:
        raise _Bad(f"type: must be one of {', '.join(TYPES)}")
    required = item.get("required", False)
    if not isinstance(required, bool):
        raise _Bad("required: must be true or false")
    help_text = item.get("help") or ""
    if not isinstance(help_text, str) or len(help_text) > MAX_HELP_CHARS:
        raise _Bad(f"help: must be a text of at most {MAX_HELP_CHARS} characters")
    _storable(help_text, "help")
    param = Param(
        name=name,
        type=kind,
        required=required,
        regex=_regex(item.get("regex"), kind),
        values=_values(item.get("values"), kind),
        help=help_text,
    )
    low, high = _bound(item.get("min"), kind, "min"), _bound(item.get("max"), kind, "max")
    if low is not None and high is not None and low > high:
        raise _Bad(f"max: must not be less than min ({low})")
    param = dataclasses.replace(param, min=low, max=high)
    default = item.get("default")
    if default is not None and default != "":
        if required:
            raise _Bad("default: a required parameter has no default (drop one of the two)")
        try:
            typed = _check(param, default)
        except _Bad as exc:
            raise _Bad(f"default: {exc}") from None
        param = dataclasses.replace(param, default=typed)
    return param


def _storable(text: str, key: str) -> None:
    """_Bad unless every backend can store ``text`` (no NUL, no lone surrogate)."""
    if "\x00" in text:
        raise _Bad(f"{key}: must not contain NUL characters")
    try:
        text.encode()
    except UnicodeEncodeError:
        raise _Bad(f"{key}: must be valid Unicode (no lone surrogates)") from None


def _regex(value: Any, kind: str) -> str | None:
    if value is None or value == "":
        return None
    if kind != "string":
        raise _Bad("regex: only string parameters have a regex")
    if not isinstance(value, str) or len(value) > MAX_REGEX_CHARS:
        raise _Bad(f"regex: must be a text of at most {MAX_REGEX_CHARS} characters")
    _storable(value, "regex")
    try:
        _compiled(value)
    except _re2().error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args else "not valid"
        reason = reason if isinstance(reason, str) else str(exc)
        raise _Bad(f"regex: is not a valid RE2 expression ({reason})") from None
    return value


def _re2() -> Any:
    """google-re2, imported at its first use: most servers hold no script with a regex,
    and it is about 3 MiB of memory (issue 16's idle RSS)."""
    import re2  # type: ignore[import-untyped]

    return re2


@functools.lru_cache(maxsize=512)
def _compiled(pattern: str) -> Any:
    re2 = _re2()
    options = re2.Options()
    options.log_errors = False  # an operator's typo is a 422, not a line in the server log
    options.max_mem = 8 << 20
    return re2.compile(pattern, options=options)


def _values(value: Any, kind: str) -> tuple[str, ...]:
    if kind != "choice":
        if value is not None:
            raise _Bad("values: only choice parameters have values")
        return ()
    if not isinstance(value, list) or not value:
        raise _Bad("values: a choice needs a list of values to choose from")
    if len(value) > MAX_CHOICES:
        raise _Bad(f"values: at most {MAX_CHOICES}")
    found: list[str] = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            raise _Bad("values: each must be a text (or a number)")
        text = str(v)
        if not text or len(text) > MAX_CHOICE_CHARS:
            raise _Bad(f"values: each must have 1 to {MAX_CHOICE_CHARS} characters")
        _storable(text, "values")
        if text in found:
            raise _Bad(f"values: {text!r} is given twice")
        found.append(text)
    return tuple(found)


def _bound(value: Any, kind: str, key: str) -> int | float | None:
    if value is None:
        return None
    if kind not in ("int", "float"):
        raise _Bad(f"{key}: only int and float parameters have a {key}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Bad(f"{key}: must be a number")
    if kind == "int":
        if isinstance(value, float) and not value.is_integer():
            raise _Bad(f"{key}: must be a whole number for an int parameter")
        return int(value)
    if not math.isfinite(value):
        raise _Bad(f"{key}: must be a finite number")
    return float(value)


# -- values ---------------------------------------------------------------------------------


def _check(param: Param, value: Any) -> Value:
    """``value`` as ``param``'s type (for int, an int; bool, a bool; …); _Bad("rule")."""
    if isinstance(value, str):
        if "\x00" in value:
            raise _Bad("must not contain NUL characters")
        try:
            size = len(value.encode())
        except UnicodeEncodeError:
            raise _Bad("must be valid Unicode (no lone surrogates)") from None
        if size > MAX_VALUE_BYTES:
            raise _Bad("must be at most 128 KiB: the OS refuses longer arguments")
    elif value is not None and not isinstance(value, int | float | bool):
        raise _Bad("must be a text, a number or true/false")
    checker = _CHECKS[param.type]
    return checker(param, value)


def _as_string(param: Param, value: Any) -> str:
    if isinstance(value, bool):
        raise _Bad("must be a text")
    text = value if isinstance(value, str) else str(value)
    if param.regex is not None and _compiled(param.regex).fullmatch(text) is None:
        raise _Bad(f"must match {param.regex}")
    return text


def _as_int(param: Param, value: Any) -> int:
    if isinstance(value, bool):
        raise _Bad("must be an integer")
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        value = int(value)
    if isinstance(value, str) and _INT.fullmatch(value.strip()):
        value = int(value.strip())
    if not isinstance(value, int):
        raise _Bad("must be an integer")
    _in_range(param, value)
    return value


def _as_float(param: Param, value: Any) -> float:
    if isinstance(value, bool):
        raise _Bad("must be a number")
    if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        value = float(value.strip())
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise _Bad("must be a number")
    _in_range(param, value)
    return float(value)


def _in_range(param: Param, value: int | float) -> None:
    if param.min is not None and value < param.min:
        raise _Bad(f"must be ≥ {param.min}")
    if param.max is not None and value > param.max:
        raise _Bad(f"must be ≤ {param.max}")


def _as_bool(param: Param, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, str | int) else ""
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise _Bad("must be true or false")


def _as_choice(param: Param, value: Any) -> str:
    if isinstance(value, bool):
        raise _Bad(f"must be one of: {', '.join(param.values)}")
    text = value if isinstance(value, str) else str(value)
    if text not in param.values:
        raise _Bad(f"must be one of: {', '.join(param.values)}")
    return text


def _as_secret(param: Param, value: Any) -> str:
    if not isinstance(value, str):
        raise _Bad("must be the name of a secret")
    name = value.strip()
    problem = refs.name_problem(name)
    if problem is not None or not 1 <= len(name) <= 200:
        raise _Bad(f"must be the name of a secret ({problem or 'it has 1 to 200 characters'})")
    return name


_CHECKS: dict[str, Callable[[Param, Any], Value]] = {
    "string": _as_string,
    "int": _as_int,
    "float": _as_float,
    "bool": _as_bool,
    "choice": _as_choice,
    "secret": _as_secret,
}


def argv_form(value: Value) -> str:
    """How a checked value reaches the script: ``true``/``false``, ``23``, ``0.5``, text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _given(value: Any) -> bool:
    return value is not None and value != ""


def resolve_params(
    declared: Sequence[Param], given: Sequence[Any] | Mapping[str, Any], where: str = ""
) -> tuple[list[str], dict[int, str]]:
    """The script's argv for ``given`` values (by name, or by position) checked against
    ``declared``, and ``secret_args``: {argv index: secret name} for ``secret`` parameters
    (the record keeps the name at that index; the value replaces it only when the job runs).

    Every declared parameter yields one argv entry, in declared order: its value, else its
    default, else ``""`` (``bool``: ``false``). A value ``null`` or ``""`` is not given.
    InvalidInput names the parameter and the rule: ``params.crf: must be ≤ 51``
    (``params.1 (crf): …`` for a value given by position), ``where`` before it.
    """
    values, fields = _by_name(declared, given, where)
    argv: list[str] = []
    secret_args: dict[int, str] = {}
    for index, param in enumerate(declared):
        field, label = fields[param.name]
        raw = values.get(param.name)
        if not _given(raw):
            if param.required:
                raise errors.InvalidInput(f"{label}: is required", field=field)
            raw = param.default if param.default is not None else None
        if raw is None:
            argv.append("false" if param.type == "bool" else "")
            continue
        try:
            typed = _check(param, raw)
        except _Bad as exc:
            raise errors.InvalidInput(f"{label}: {exc}", field=field) from None
        argv.append(argv_form(typed))
        if param.type == "secret":
            secret_args[index] = argv[index]
    return argv, secret_args


def _by_name(
    declared: Sequence[Param], given: Sequence[Any] | Mapping[str, Any], where: str
) -> tuple[dict[str, Any], dict[str, tuple[str, str]]]:
    """The values by parameter name, and each parameter's (field, label) for messages."""
    names = [p.name for p in declared]
    if isinstance(given, Mapping):
        for key in given:
            if key not in names:
                declares = ", ".join(names)
                raise errors.InvalidInput(
                    f"{where}params.{key}: unknown parameter (the script declares: {declares})",
                    field=f"{where}params.{key}",
                )
        fields = {n: (f"{where}params.{n}",) * 2 for n in names}
        return dict(given), fields
    if len(given) > len(declared):
        raise errors.InvalidInput(
            f"{where}params: the script declares {len(declared)} parameters "
            f"({', '.join(names)}); {len(given)} were given",
            field=f"{where}params",
        )
    fields = {n: (f"{where}params.{i}", f"{where}params.{i} ({n})") for i, n in enumerate(names)}
    return dict(zip(names, given, strict=False)), fields
