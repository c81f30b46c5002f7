"""`jobbalancer parallel` on paper: inputs, replacement strings, quoting, --halt, the
joblog and the exit code (jobbalancer.cli.fanout)."""

from __future__ import annotations

import io
import shlex
import subprocess
from pathlib import Path

import pytest

from jobbalancer.cli import fanout

HOSTILE = [
    "a b; rm -rf ~",
    "$(id)",
    "`id`",
    "it's",
    'say "hi"',
    "ünïcødé ☃",
    "-n",
    "*",
    "a\\b",
    "",
    "x\ty",
    "$HOME",
    "semi;colon|pipe&amp>gt<lt",
]


# -- inputs


def test_split_command_finds_the_inputs() -> None:
    assert fanout.split_command(["echo", "{}", ":::", "a", "b c"]) == (
        ["echo", "{}"],
        fanout.Source(values=("a", "b c")),
    )
    assert fanout.split_command(["gzip", "::::", "f1", "-"]) == (
        ["gzip"],
        fanout.Source(files=("f1", "-")),
    )
    assert fanout.split_command(["echo", "{}"]) == (["echo", "{}"], fanout.Source())
    assert fanout.split_command(["echo", ":::"]) == (["echo"], fanout.Source(values=()))


@pytest.mark.parametrize(
    "words", [["echo", ":::", "a", ":::", "b"], ["echo", ":::", "a", "::::", "f"], ["x", "::::"]]
)
def test_split_command_refuses_what_it_cannot_do(words: list[str]) -> None:
    with pytest.raises(fanout.UsageError):
        fanout.split_command(words)


def test_read_lines() -> None:
    text = "a\nb c\r\n\nlast"
    assert fanout.read_lines(io.StringIO(text)) == ["a", "b c", "", "last"]
    assert fanout.read_lines(io.StringIO(text), skip_empty=True) == ["a", "b c", "last"]
    assert fanout.read_lines(io.StringIO("")) == []
    assert fanout.read_lines(io.StringIO("one\n")) == ["one"]


# -- replacement strings


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # value: {}, {.}, {/}, {//}, {/.}  (GNU parallel's results)
        ("dir/sub/file.tar.gz", ("dir/sub/file.tar.gz", "dir/sub/file.tar", "file.tar.gz",
                                 "dir/sub", "file.tar")),
        ("file.txt", ("file.txt", "file", "file.txt", ".", "file")),
        ("/abs.d/name", ("/abs.d/name", "/abs.d/name", "name", "/abs.d", "name")),
        ("/top", ("/top", "/top", "top", "/", "top")),
        ("dir/", ("dir/", "dir/", "", ".", "")),
        ("a//b/", ("a//b/", "a//b/", "", "a", "")),
        ("noext.", ("noext.", "noext.", "noext.", ".", "noext.")),
        ("/", ("/", "/", "", "/", "")),
    ],
)  # fmt: skip
def test_replacement_strings(value: str, expected: tuple[str, ...]) -> None:
    tokens = ["", ".", "/", "//", "/."]
    assert tuple(fanout.replace(t, value, 7) for t in tokens) == expected
    assert fanout.replace("#", value, 7) == "7"


def test_gnu_parallels_first_source_strings_and_unsupported_ones() -> None:
    # one input source: {1} is {}, {1.} is {.}, …; {2} and up stay text (regex counts)
    got = fanout.command_for(["echo {1} {1.} {1/} {1//} {1/.} x{2} {11}"], "d/f.c", 4)
    assert got == "echo d/f.c d/f f.c d f x{2} {11}"
    for unsupported in ("{%}", "{= s/a/b/ =}", "{..}", "{+/}", "{+.}"):
        with pytest.raises(fanout.UsageError, match="not supported"):
            fanout.check_command([f"echo {unsupported}"])
        with pytest.raises(fanout.UsageError, match="not supported"):
            fanout.check_command([], [unsupported])
    fanout.check_command(["grep", "-E", "[0-9]{2}", "{}"], ["{1}", "`{}`"])


def test_every_replacement_string_in_a_word() -> None:
    got = fanout.substitute("{}|{.}|{/}|{//}|{/.}|{#}|{x}", "d/f.c", 3)
    assert got == "d/f.c|d/f|f.c|d|f|3|{x}"


# -- commands and quoting


@pytest.mark.parametrize("value", HOSTILE)
def test_several_words_each_one_argument(value: str) -> None:
    command = fanout.command_for(["printf", "%s\\n", "{}", "in-{/.}.out"], value, 1)
    assert shlex.split(command) == [
        "printf",
        "%s\\n",
        value,
        f"in-{fanout.replace('/.', value, 1)}.out",
    ]


@pytest.mark.parametrize("value", HOSTILE)
def test_one_word_is_a_shell_line_with_values_quoted(value: str) -> None:
    command = fanout.command_for(["printf '<%s>' {} {#} | cat"], value, 12)
    result = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, check=True)
    assert result.stdout == f"<{value}><12>"


# Where users put {} in a shell line: each must give the input back exactly.
QUOTED_PLACES = [
    ("printf '<%s>' {}", "<{v}>"),
    ("printf '<%s>' '{}'", "<{v}>"),
    ('printf "<%s>" "{}"', "<{v}>"),
    ("printf '<%s>' 'pre {} post'", "<pre {v} post>"),
    ("printf '<%s>' \"pre {}'s\" # it's {}", "<pre {v}'s>"),
    ('printf "<%s>" "$(printf %s "{}")"', "<{v}>"),
    ("printf '<%s>' \"$(printf '%s|' {} '{}')\"", "<{v}|{v}|>"),
    ("printf '<%s>' \"$(( 1 + 1 ))-{}\" {#}", "<2-{v}><3>"),
]
EXACT = [*HOSTILE, "a\nb", "'", '"', "\\", "`", "$", 'it\'s "both"', '\\"; echo x; \\"']


@pytest.mark.parametrize(("template", "expected"), QUOTED_PLACES)
def test_a_value_is_quoted_for_where_it_stands(template: str, expected: str) -> None:
    for value in EXACT:
        command = fanout.command_for([template], value, 3)
        result = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True)
        assert (result.returncode, result.stdout) == (0, expected.format(v=value)), command


def test_no_place_in_a_shell_line_runs_a_value(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    canary.mkdir()
    values = [f"$(touch {canary}/1)", f"`touch {canary}/2`", f"'; touch {canary}/3; '",
              f'"; touch {canary}/4; "', f'\\"; touch {canary}/5; \\"',
              f"x\ntouch {canary}/6", f"x\\'; touch {canary}/7; '"]  # fmt: skip
    templates = [t for t, _ in QUOTED_PLACES] + [
        "cat <<END\n{}\nEND",
        "cat <<'END'\n'{}'\nEND",
        "echo $(( 1 << 2 )) {}",
        "echo '`{}`'",
        'echo ${UNSET:-{}} "${UNSET:-{}}"',
        "echo \\'{}\\'",
    ]
    for template in templates:
        for value in values:
            command = fanout.command_for([template], value, 1)
            subprocess.run(["/bin/sh", "-c", command], capture_output=True, check=False)
            assert list(canary.iterdir()) == [], command


@pytest.mark.parametrize("template", ["echo `basename {}`", 'echo "`cat {}`"', "`echo {#}`"])
def test_a_replacement_string_in_backticks_is_refused(template: str) -> None:
    with pytest.raises(fanout.UsageError, match=r"\$\(…\)"):
        fanout.check_command([template])
    fanout.check_command(["echo", "`{}`"])  # one argument, no shell reads it


def test_hostile_value_runs_nothing() -> None:
    command = fanout.command_for(["echo {}"], "x; echo INJECTED", 1)
    out = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, check=True)
    assert out.stdout == "x; echo INJECTED\n"


def test_no_replacement_string_appends_the_input() -> None:
    assert fanout.command_for(["gzip", "-9"], "a b", 1) == "gzip -9 'a b'"
    assert fanout.command_for(["gzip -9"], "a b", 1) == "gzip -9 'a b'"
    assert fanout.command_for(["echo"], "$(id)", 1) == "echo '$(id)'"


def test_script_params_are_not_quoted() -> None:
    assert fanout.params_for(["{}", "--out={.}.webm"], "a b; $(id).mp4", 2) == [
        "a b; $(id).mp4",
        "--out=a b; $(id).webm",
    ]
    assert fanout.params_for(["-v"], "it's", 1) == ["-v", "it's"]
    assert fanout.params_for([], "x y", 1) == ["x y"]


# -- --halt and the exit code


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, None),
        ("never", None),
        ("0", None),
        ("1", fanout.Halt("soon", 1)),
        ("2", fanout.Halt("now", 1)),
        ("soon,fail=1", fanout.Halt("soon", 1)),
        ("now,fail=3", fanout.Halt("now", 3)),
        ("soon,fail=10%", fanout.Halt("soon", percent=10.0)),
        ("now,fail=2.5%", fanout.Halt("now", percent=2.5)),
    ],
)
def test_parse_halt(text: str | None, expected: fanout.Halt | None) -> None:
    assert fanout.parse_halt(text) == expected


@pytest.mark.parametrize(
    "text", ["soon", "later,fail=1", "soon,fail=0", "soon,fail=1.5", "now,fail=0%",
             "now,fail=101%", "soon,success=1", "fail=1", "3"]
)  # fmt: skip
def test_parse_halt_refuses(text: str) -> None:
    with pytest.raises(fanout.UsageError, match="--halt"):
        fanout.parse_halt(text)


def test_halt_reached() -> None:
    assert not fanout.Halt("soon", 2).reached(1, 100)
    assert fanout.Halt("soon", 2).reached(2, 100)
    assert not fanout.Halt("now", percent=10).reached(9, 100)
    assert fanout.Halt("now", percent=10).reached(10, 100)
    assert not fanout.Halt("now", percent=10).reached(0, 0)


@pytest.mark.parametrize(("failures", "code"), [(0, 0), (1, 1), (100, 100), (101, 101),
                                                (102, 101), (5000, 101)])  # fmt: skip
def test_exit_code(failures: int, code: int) -> None:
    assert fanout.exit_code(failures) == code


def test_exit_code_after_a_halt_on_the_first_failure_is_that_jobs() -> None:
    assert fanout.exit_code(1, halted_by=fanout.Halt("soon", 1), first_code=7) == 7
    assert fanout.exit_code(2, halted_by=fanout.Halt("now", 1), first_code=137) == 137
    assert fanout.exit_code(1, halted_by=fanout.Halt("now", 1), first_code=None) == 1  # timeout
    assert fanout.exit_code(3, halted_by=fanout.Halt("soon", 3), first_code=7) == 3
    assert fanout.exit_code(3, halted_by=fanout.Halt("soon", percent=1), first_code=7) == 3
    assert fanout.exit_code(3, first_code=7) == 3


# -- the joblog


def test_joblog_line_has_gnu_parallels_columns() -> None:
    job = {
        "state": "failed",
        "worker": {"id": 2, "name": "node-2"},
        "started_at": "2026-12-04T10:00:00.250Z",
        "finished_at": "2026-12-04T10:00:02.000Z",
        "created_at": "2026-12-04T09:59:59.000Z",
        "output_bytes": 42,
        "exit_code": 3,
        "signal": None,
    }
    line = fanout.joblog_line(7, job, "gzip 'a b'\nnext")
    fields = line.split("\t")
    assert len(fields) == len(fanout.JOBLOG_HEADER.split("\t")) == 9
    assert fields == ["7", "node-2", "1796378400.250", "     1.750", "0", "42", "3", "0",
                      "gzip 'a b' next"]  # fmt: skip


def test_joblog_line_of_a_job_that_never_ran() -> None:
    job = {"state": "killed", "worker": None, "created_at": "2026-12-04T10:00:00Z"}
    fields = fanout.joblog_line(1, job, "true").split("\t")
    assert fields[1] == ":" and fields[2] == "1796378400.000"
    assert fields[3].strip() == "0.000" and fields[6] == "-1" and fields[7] == "0"
    killed = {"state": "killed", "signal": 15, "started_at": "bogus"}
    assert fanout.joblog_line(2, killed, "x").split("\t")[6:8] == ["-1", "15"]


def test_tag_lines() -> None:
    assert fanout.tag_lines("a\nb\n", "in put") == "in put\ta\nin put\tb\n"
    assert fanout.tag_lines("no newline", "x") == "x\tno newline"
    assert fanout.tag_lines("", "x") == ""
