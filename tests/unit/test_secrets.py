"""Secrets without a database: the encryption (round trip, wrong key, tampering, a value
moved to another name), the key file, and masking values in output split anywhere."""

from __future__ import annotations

import base64
import dataclasses
import os
import random
import stat
from pathlib import Path

import pytest
import sqlalchemy as sa

from jobbalancer import errors, jobs, vault
from jobbalancer.settings import Settings
from jobbalancer.worker import loop
from jobbalancer.worker.masking import MASK, Masker
from jobbalancer.worker.output import OutputSink

KEY = vault.Key.parse(vault.new_key_text(), "test")


# -- encryption ---------------------------------------------------------------------------


def test_round_trip_and_every_sealing_differs() -> None:
    one = KEY.encrypt("pa55 wörd", "prod-db")
    two = KEY.encrypt("pa55 wörd", "prod-db")
    assert one != two  # a fresh nonce each time
    assert "pa55" not in one
    assert one.startswith(f"v1:{KEY.id}:")
    assert KEY.decrypt(one, "prod-db") == "pa55 wörd"


def test_a_wrong_key_is_named_by_its_id_not_shown() -> None:
    other = vault.Key.parse(vault.new_key_text(), "/etc/other.key")
    sealed = KEY.encrypt("value", "prod-db")
    with pytest.raises(vault.CannotDecrypt, match=f"key with id {KEY.id}.*id {other.id}") as exc:
        other.decrypt(sealed, "prod-db")
    assert other.raw.hex() not in str(exc.value) and "value" not in str(exc.value)


def test_a_wrong_key_with_the_same_id_fails_the_integrity_check() -> None:
    # A stored key id changed to ours (by someone with database access): the tag still fails.
    other = vault.Key.parse(vault.new_key_text(), "other")
    sealed = other.encrypt("value", "prod-db").replace(other.id, KEY.id)
    with pytest.raises(vault.CannotDecrypt, match="integrity check"):
        KEY.decrypt(sealed, "prod-db")


@pytest.mark.parametrize("where", [0, 5, 20, -1])
def test_a_changed_byte_fails_the_integrity_check(where: int) -> None:
    sealed = KEY.encrypt("the value", "prod-db")
    head, body = sealed.rsplit(":", 1)
    data = bytearray(base64.b64decode(body))
    data[where] ^= 0x01
    tampered = f"{head}:{base64.b64encode(bytes(data)).decode()}"
    with pytest.raises(vault.CannotDecrypt, match="integrity check"):
        KEY.decrypt(tampered, "prod-db")


def test_a_value_moved_to_another_name_does_not_open() -> None:
    sealed = KEY.encrypt("prod password", "prod-db")
    with pytest.raises(vault.CannotDecrypt, match="integrity check"):
        KEY.decrypt(sealed, "test-db")


# The ids are fixed (KEY and the random key differ per process): pytest-xdist's processes
# must collect the same tests.
@pytest.mark.parametrize(
    "stored",
    ["", "v1", "v2:abc:def", f"v1:{KEY.id}:not base64!"],
    ids=["empty", "version-only", "unknown-version", "not-base64"],
)
def test_garbage_is_refused_without_a_crash(stored: str) -> None:
    with pytest.raises(vault.CannotDecrypt):
        KEY.decrypt(stored, "x")


@pytest.mark.parametrize(
    "text",
    ["", "short", "a" * 44, base64.b64encode(os.urandom(16)).decode()],
    ids=["empty", "short", "not-base64", "16-bytes"],
)
def test_a_malformed_key_is_a_config_error(text: str) -> None:
    with pytest.raises(errors.ConfigError, match="32 bytes"):
        vault.Key.parse(text, "JOBBALANCER_SECRET_KEY")


def test_the_key_never_shows_in_its_repr() -> None:
    assert base64.urlsafe_b64encode(KEY.raw).decode() not in repr(KEY)
    text = vault.new_key_text()
    assert text not in repr(Settings(secret_key=text))


def test_the_key_file_is_made_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "data" / "secret.key"
    key, made = vault.ensure_key_file("", path)
    assert made and stat.S_IMODE(path.stat().st_mode) == 0o600
    again, made_again = vault.ensure_key_file("", path)
    assert not made_again and again.raw == key.raw
    path.chmod(0o644)
    with pytest.raises(errors.ConfigError, match="chmod 600"):
        vault.load_key("", path)


def test_two_processes_making_the_key_file_at_once_get_the_same_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "secret.key"
    real_link = os.link

    def other_first(src: str, dst: str) -> None:  # another server links its file first
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            os.write(fd, (vault.new_key_text() + "\n").encode())
            os.close(fd)
        real_link(src, dst)

    monkeypatch.setattr(os, "link", other_first)
    key, made = vault.ensure_key_file("", path)
    assert not made and key.raw == vault.load_key("", path).raw  # type: ignore[union-attr]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret.key"]  # no draft left


def test_without_hard_links_the_key_file_is_made_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(src: str, dst: str) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "secret.key"
    key, made = vault.ensure_key_file("", path)
    assert made and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert vault.load_key("", path) == key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret.key"]


def test_the_variable_wins_over_the_file(tmp_path: Path) -> None:
    text = vault.new_key_text()
    path = tmp_path / "secret.key"
    vault.ensure_key_file("", path)
    assert vault.load_key(text, path) == vault.Key.parse(text, "JOBBALANCER_SECRET_KEY")
    config = Settings(data_dir=str(tmp_path))
    assert config.secret_key_path == path.resolve()
    assert vault.load_key("", tmp_path / "none") is None


def test_target_secrets_seal_and_open_with_their_context() -> None:
    sealed = vault.seal(KEY, "hook-secret", "notification-target:3")
    assert sealed is not None and vault.is_sealed(sealed)
    assert vault.unseal(KEY, sealed, "notification-target:3") == "hook-secret"
    assert vault.unseal(KEY, "kept in clear", "notification-target:3") == "kept in clear"
    with pytest.raises(vault.NoKey):
        vault.unseal(None, sealed, "notification-target:3")
    with pytest.raises(vault.NoKey):
        vault.unseal(KEY, sealed, "notification-target:4")


# -- masking ------------------------------------------------------------------------------


def mask_whole(text: bytes, values: list[str]) -> bytes:
    m = Masker(values)
    return m.feed(text) + m.flush()


def mask_split(text: bytes, values: list[str], cuts: list[int]) -> bytes:
    m = Masker(values)
    out, last = b"", 0
    for cut in [*sorted(cuts), len(text)]:
        out += m.feed(text[last:cut])
        last = cut
    return out + m.flush()


def test_masks_every_occurrence() -> None:
    assert mask_whole(b"a hunter2 b hunter2", ["hunter2"]) == b"a **** b ****"


def test_a_value_split_at_every_point_is_masked() -> None:
    text = b"password=hunter2; done"
    for cut in range(len(text) + 1):
        assert mask_split(text, ["hunter2"], [cut]) == b"password=****; done"


def test_a_value_split_in_three_and_byte_by_byte() -> None:
    text = b"x hunter2 y"
    assert mask_split(text, ["hunter2"], [4, 6]) == b"x **** y"
    assert mask_split(text, ["hunter2"], list(range(len(text)))) == b"x **** y"


def test_only_a_possible_start_is_held_back() -> None:
    m = Masker(["hunter2"])
    assert m.feed(b"line one\n") == b"line one\n"  # nothing held: no value starts here
    assert m.feed(b"and hun") == b"and "
    assert m.held == 3
    assert m.feed(b"dreds\n") == b"hundreds\n"  # not the value after all
    assert m.feed(b"hunter") == b""
    assert m.flush() == b"hunter"  # the stream ended: it was no value


def test_longest_value_first_and_several_values() -> None:
    assert mask_whole(b"abc abcdef def", ["abc", "abcdef"]) == b"**** **** def"
    assert mask_split(b"1 tok-A 2 pw-B 3", ["tok-A", "pw-B"], [4, 11]) == b"1 **** 2 **** 3"


def test_multibyte_values_split_inside_a_character() -> None:
    text = "clé: sécret!".encode()
    for cut in range(len(text) + 1):
        assert mask_split(text, ["sécret"], [cut]) == "clé: ****!".encode()


def test_a_value_of_several_lines_is_also_masked_line_by_line() -> None:
    pem = "-----BEGIN KEY-----\r\nMIIEvQIBADANBgkq\nhkiG9w0BAQEFAASC\nab\n-----END KEY-----"
    assert mask_whole(pem.encode() + b"\n", [pem]) == b"****\n"  # whole: one mask
    # Printed in part (head -n 2), each long line is masked, split or not.
    part = b"-----BEGIN KEY-----\nMIIEvQIBADANBgkq\n"
    assert mask_whole(part, [pem]) == b"****\n****\n"
    for cut in range(len(part) + 1):
        assert mask_split(part, [pem], [cut]) == b"****\n****\n"
    # A short line ("ab") is common text: not masked on its own.
    assert mask_whole(b"ab cd\n", [pem]) == b"ab cd\n"


def test_no_values_pass_everything_through() -> None:
    m = Masker([])
    assert m.feed(b"abc") == b"abc" and m.flush() == b""


def test_random_splits_never_leak_and_match_whole_masking() -> None:
    rng = random.Random(1414)
    alphabet = b"ab\n xyz"
    for _ in range(300):
        values = list({bytes(rng.choice(alphabet) for _ in range(rng.randint(2, 6))).decode()
                       for _ in range(rng.randint(1, 3))})  # fmt: skip
        text = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        cuts = [rng.randint(0, len(text)) for _ in range(rng.randint(0, 6))]
        assert mask_split(text, values, cuts) == mask_whole(text, values), (values, text, cuts)
        out = mask_split(text, values, cuts)
        # What shows is what whole masking shows: no value survives unless the masks
        # themselves could not separate overlapping values.
        if not any(a != b and (a in b or b in a) for a in values for b in values):
            for v in values:
                assert v.encode() not in out.replace(MASK, b"\0") or MASK in v.encode()


def test_a_long_value_is_quick_to_hold() -> None:
    value = "x" * 60_000
    m = Masker([value])
    out = m.feed(b"y" * 100_000)
    assert out == b"y" * 100_000 and m.held == 0


# -- masking in the output sink -----------------------------------------------------------


def _sink_output(chunks: list[tuple[str, bytes]], values: list[str], cap: int) -> dict[str, bytes]:
    sink = OutputSink(sa.create_engine("sqlite://"), flush_bytes=1 << 30)
    sink.open(1, cap)
    sink.mask(1, values)
    for stream, data in chunks:
        sink.write(1, stream, data)
    kept = sink._close([1])
    rows, _ = sink._seal(only={1})
    out: dict[str, bytes] = {"stdout": b"", "stderr": b""}
    for row in rows:
        out[str(row["stream"])] += bytes(row["data"])  # type: ignore[arg-type]
    assert kept[1] == sum(len(v) for v in out.values()) - _marker_len(out)
    return out


def _marker_len(out: dict[str, bytes]) -> int:
    found = [v for v in out.values() if b"[jobbalancer: output truncated" in v]
    if not found:
        return 0
    text = found[0]
    return len(text) - text.index(b"\n[jobbalancer")


def test_sink_masks_each_stream_across_writes_and_flushes_the_tail() -> None:
    out = _sink_output(
        [
            ("stdout", b"pw=hun"),
            ("stderr", b"err hunt"),
            ("stdout", b"ter2 ok\nhun"),
            ("stderr", b"er2!"),
        ],
        ["hunter2"],
        cap=1 << 20,
    )
    assert out["stdout"] == b"pw=**** ok\nhun"
    assert out["stderr"] == b"err ****!"


def test_sink_caps_the_masked_output() -> None:
    out = _sink_output([("stdout", b"hunter2 " * 10)], ["hunter2"], cap=12)
    assert out["stdout"].startswith(b"**** **** **")
    assert b"hunter" not in out["stdout"] and b"output truncated" in out["stdout"]


# -- the worker's side ----------------------------------------------------------------------


def test_secret_args_replace_params_by_index_and_env_is_merged() -> None:
    # A record with only what the worker reads here (the rest does not matter).
    job = jobs.Job(**dict.fromkeys(jobs.Job.__dataclass_fields__))  # type: ignore[arg-type]
    job = dataclasses.replace(job, params=("in.mp4", "api-token", "x"), secret_args={1: "tok"},
                              secret_env={"PGPASSWORD": "db"})  # fmt: skip
    assert loop._with_secret_args(job, {"tok": "T0KEN", "db": "pw"}) == ("in.mp4", "T0KEN", "x")
    short = dataclasses.replace(job, secret_args={5: "tok"})
    with pytest.raises(vault.Unusable, match="param 5"):
        loop._with_secret_args(short, {"tok": "T0KEN"})
    assert vault.names_of(job.secret_env, job.secret_args) == ["db", "tok"]
