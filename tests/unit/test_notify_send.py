"""What notifications look like and how sending fails: the signature, chat and mail text,
and a target that never answers given up on within the total timeout."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from jobbalancer import notify
from jobbalancer.settings import NotifySettings
from tests.receivers import free_port, silent_server, webhook

DOC = {
    "job_id": 42, "state": "failed", "url": "https://jobs.test/jobs/42", "exit_code": 3,
    "command": "./backup.sh", "script": None, "worker": "node-1", "stderr_tail": "disk full\n",
}  # fmt: skip


def test_signature_is_hmac_sha256_of_the_body() -> None:
    body = b'{"job_id":42}'
    expected = hmac.new(b"k", body, hashlib.sha256).hexdigest()
    assert notify.signature("k", body) == f"sha256={expected}"


def test_chat_text_and_mail_text_say_what_happened() -> None:
    text = notify.chat_text(DOC)
    assert text.startswith("Job <https://jobs.test/jobs/42|#42> *failed* (exit 3)")
    assert "`./backup.sh`" in text and "disk full" in text
    subject, body = notify.mail_text(DOC)
    assert subject == "[jobbalancer] job 42 failed (exit 3)"
    assert "Link: https://jobs.test/jobs/42" in body and "disk full" in body


def test_a_silent_server_is_given_up_on_within_the_total_timeout() -> None:
    with silent_server() as url:
        started = time.monotonic()
        with pytest.raises(notify.DeliveryError, match=r"did not answer within 0\.5 s"):
            notify.post(url, b"{}", {}, notify.Timeouts(connect=0.2, total=0.5))
        assert time.monotonic() - started < 2


def test_refused_and_unconfigured_say_why() -> None:
    with pytest.raises(notify.DeliveryError, match="connection refused"):
        notify.post(f"http://127.0.0.1:{free_port()}/", b"{}", {}, notify.Timeouts())
    with pytest.raises(notify.DeliveryError, match="no SMTP server is configured"):
        notify.send_mail(NotifySettings(), ["a@b.test"], "s", "t", "k")
    refused = NotifySettings(smtp_host="127.0.0.1", smtp_port=free_port())
    with pytest.raises(notify.DeliveryError, match=r"SMTP cannot connect to 127\.0\.0\.1:\d+"):
        notify.send_mail(refused, ["a@b.test"], "s", "t", "k")


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:99999/x", "http://127.0.0.1:abc/x", "http://a b/x"]
)
def test_a_url_stored_before_urls_were_checked_fails_the_delivery_not_the_server(url: str) -> None:
    with pytest.raises(notify.DeliveryError, match="not usable"):
        notify.post(url, b"{}", {}, notify.Timeouts(0.5, 0.5))


@pytest.mark.parametrize("path", ["/services/T0/SECRET\x7f", "/services/T0/SECRET\u00fc"])
def test_an_unusable_path_fails_the_delivery_without_showing_the_path(path: str) -> None:
    with webhook() as hook, pytest.raises(notify.DeliveryError) as failed:
        notify.post(hook.url + path, b"{}", {}, notify.Timeouts(1, 1))
    assert "not usable" in str(failed.value) and "SECRET" not in str(failed.value)


@contextmanager
def dribbling_server(pause: float) -> Iterator[str]:
    """An HTTP server that answers one byte of its status line per ``pause`` seconds: each
    read is within a socket timeout, the whole is not."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    sock.settimeout(5)

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = sock.accept()
            with conn:
                conn.recv(65536)
                for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n":
                    conn.sendall(bytes([byte]))
                    time.sleep(pause)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    finally:
        sock.close()
        thread.join(timeout=5)


def test_a_server_answering_a_byte_at_a_time_is_cut_at_the_total_timeout() -> None:
    with dribbling_server(pause=0.1) as url:
        started = time.monotonic()
        with pytest.raises(notify.DeliveryError, match=r"did not answer within 0\.5 s"):
            notify.post(url, b"{}", {}, notify.Timeouts(connect=0.3, total=0.5))
        assert time.monotonic() - started < 1.5


class _SlowHandler:
    """Answers each SMTP command of a mail after ``pause`` seconds."""

    def __init__(self, pause: float) -> None:
        self.pause = pause

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:  # fmt: skip
        await asyncio.sleep(self.pause)
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:  # fmt: skip
        await asyncio.sleep(self.pause)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(self.pause)
        return "250 OK"


def test_a_slow_mail_server_is_cut_at_the_total_timeout_not_per_reply() -> None:
    controller = Controller(_SlowHandler(0.4), hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        smtp = NotifySettings(
            smtp_host="127.0.0.1", smtp_port=controller.port, smtp_security="none"
        )
        started = time.monotonic()
        with pytest.raises(notify.DeliveryError, match=r"did not finish within 1 s"):
            notify.send_mail(smtp, ["a@b.test"], "s", "t", "k", notify.Timeouts(1, 1))
        assert time.monotonic() - started < 1.3
        # each reply is within 1 s: a per-reply timeout alone lets it through
        notify.send_mail(smtp, ["a@b.test"], "s", "t", "k", notify.Timeouts(1, 5))
    finally:
        controller.stop()


def test_chat_text_escapes_what_the_job_wrote() -> None:
    """A command or output with <!channel> or a <url|label> link pings or links nobody."""
    doc = {**DOC, "command": "echo '<!channel> a&b'", "stderr_tail": "<https://evil.test|docs>"}
    text = notify.chat_text(doc)
    assert "<!channel>" not in text and "&lt;!channel&gt; a&amp;b" in text
    assert "<https://evil.test" not in text and "&lt;https://evil.test|docs&gt;" in text
    assert text.startswith("Job <https://jobs.test/jobs/42|#42>")  # our own link stays one


class _Refusing:
    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:  # fmt: skip
        return "550 no such user here"


def test_refused_recipients_are_counted_not_named() -> None:
    """last_error shows to whoever sees the job; the target's addresses are admins' only."""
    controller = Controller(_Refusing(), hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        smtp = NotifySettings(
            smtp_host="127.0.0.1", smtp_port=controller.port, smtp_security="none"
        )
        with pytest.raises(notify.DeliveryError) as failed:
            notify.send_mail(smtp, ["ceo@corp.test", "cfo@corp.test"], "s", "t", "k")
        assert "refused all 2 recipient(s) (550)" in str(failed.value)
        assert "corp.test" not in str(failed.value)
    finally:
        controller.stop()
