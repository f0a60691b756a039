"""queue/qmail-queue against a real program run as a subprocess.

``tests/bin/fake-qmail-queue`` speaks qmail-queue's protocol (message on
fd 0, envelope on fd 1, the exit code is the verdict) and records what it
read into files named by environment variables, so the bytes the plugin
sent are compared exactly. Its exit code, and whether it reads, hangs or
kills itself, are chosen per test.
"""

import os
import re
import time

import pytest

from conftest import strip_trace
from qpsmtpd.plugin import PluginError

FAKE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bin", "fake-qmail-queue")
NAME = "queue::qmail_2dqueue"

MESSAGE = (
    "Subject: hello\r\n"
    "Message-Id: <123@example.net>\r\n"
    "\r\n"
    "body\r\n"
    "..dot\r\n"
    ".\r\n"
)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Environment for the fake program; returns the paths it records to."""
    monkeypatch.delenv("QMAILQUEUE", raising=False)
    files = {name: tmp_path / name for name in ("message", "envelope", "pid")}
    monkeypatch.setenv("FAKE_QQ_MESSAGE", str(files["message"]))
    monkeypatch.setenv("FAKE_QQ_ENVELOPE", str(files["envelope"]))
    monkeypatch.setenv("FAKE_QQ_PID", str(files["pid"]))
    monkeypatch.delenv("FAKE_QQ_EXIT", raising=False)
    monkeypatch.delenv("FAKE_QQ_MODE", raising=False)
    return files


@pytest.fixture
def session(plugin_session):
    def factory(args=FAKE):
        return plugin_session(["returns rcpt OK", f"queue/qmail-queue {args}"])

    return factory


def unable_to_queue(reason):
    """The reply to the dot after EHLO when the plugin declined without a code."""
    return (451, [f"4.3.0 Unable to queue message ({reason})"])


def big_message():
    return "Subject: big\r\n\r\n" + ("z" * 998 + "\r\n") * 1000 + ".\r\n"


def test_message_and_envelope_reach_the_program(session, fake):
    client = session()
    reply = client.send_message("alice@example.net",
                                ["bob@example.org", "carol@example.org"], MESSAGE)
    pid = int(fake["pid"].read_bytes())
    assert reply.code == 250
    match = re.fullmatch(r"2\.0\.0 Queued! (\d+) qp (\d+) <123@example\.net>", reply.text)
    assert match, reply.text
    assert abs(int(match.group(1)) - time.time()) < 60
    assert int(match.group(2)) == pid
    assert strip_trace(fake["message"].read_bytes()) == (
        b"Subject: hello\nMessage-Id: <123@example.net>\n\nbody\n.dot\n")
    assert fake["envelope"].read_bytes() == (
        b"Falice@example.net\0Tbob@example.org\0Tcarol@example.org\0\0")
    assert client.log_contains(f"{NAME}: (for {os.getpid()}) Queuing qp {pid} to {FAKE}")
    assert client.log_contains(f"{NAME}: pass, queued by {FAKE} (qp {pid})")


def test_null_sender_and_message_id_forms(session, fake):
    client = session()
    reply = client.send_message("", ["bob@example.org"],
                                "Subject: bounce\r\n\r\nno id\r\n.\r\n")
    assert reply.code == 250 and reply.text.endswith(" <>")
    assert fake["envelope"].read_bytes() == b"F\0Tbob@example.org\0\0"
    reply = client.send_message("alice@example.net", ["postmaster"],
                                "Message-Id: bare@example.net\r\n\r\nx\r\n.\r\n", helo=None)
    assert reply.code == 250 and reply.text.endswith(" <bare@example.net>")
    assert fake["envelope"].read_bytes() == b"Falice@example.net\0Tpostmaster\0\0"


def test_qmailqueue_environment_overrides_the_argument(session, fake, monkeypatch):
    monkeypatch.setenv("QMAILQUEUE", FAKE)
    client = session("/nonexistent/qmail-queue")
    reply = client.send_message("alice@example.net", ["bob@example.org"], MESSAGE)
    assert reply.code == 250
    assert fake["envelope"].read_bytes() == b"Falice@example.net\0Tbob@example.org\0\0"


def test_default_path_from_qmail_environment(make_app, fake, monkeypatch, tmp_path):
    monkeypatch.setenv("QMAIL", str(tmp_path / "qmail"))
    app = make_app(["queue/qmail-queue"])
    plugin = app.dispatcher.plugins[-1]
    assert plugin.queue_exec == str(tmp_path / "qmail" / "bin" / "qmail-queue")


@pytest.mark.parametrize("code, reply_code, text", [
    (11, 552, "5.1.3 Unable to queue message (11, address too long) (#5.1.3)"),
    (31, 552, "5.3.0 Unable to queue message (31, mail server permanently refuses "
              "the message) (#5.3.0)"),
    (25, 552, "5.3.0 Unable to queue message (25, permanent problem) (#5.3.0)"),
])
def test_permanent_exit_codes(session, fake, monkeypatch, code, reply_code, text):
    monkeypatch.setenv("FAKE_QQ_EXIT", str(code))
    client = session()
    reply = client.send_message("alice@example.net", ["bob@example.org"], MESSAGE)
    assert (reply.code, reply.text) == (reply_code, text)
    assert client.log_contains(f"{NAME}: error, {FAKE} (qp ")


@pytest.mark.parametrize("code, text", [
    (53, "4.3.0 Unable to queue message (53, write error, disk full?) (#4.3.0)"),
    (54, "4.3.0 Unable to queue message (54, unable to read the message or envelope) "
         "(#4.3.0)"),
    (72, "4.4.1 Unable to queue message (72, connection to mail server timed out) (#4.4.1)"),
    (81, "4.3.0 Unable to queue message (81, internal bug) (#4.3.0)"),
    (91, "4.3.0 Unable to queue message (91, envelope format error) (#4.3.0)"),
    (1, "4.3.0 Unable to queue message (1, temporary problem) (#4.3.0)"),
    (99, "4.3.0 Unable to queue message (99, temporary problem) (#4.3.0)"),
])
def test_temporary_exit_codes(session, fake, monkeypatch, code, text):
    monkeypatch.setenv("FAKE_QQ_EXIT", str(code))
    client = session()
    reply = client.send_message("alice@example.net", ["bob@example.org"], MESSAGE)
    assert (reply.code, reply.text) == (451, text)
    # the session carries on and the next message can be queued
    monkeypatch.setenv("FAKE_QQ_EXIT", "0")
    assert client.send_message("alice@example.net", ["bob@example.org"], MESSAGE,
                               helo=None).code == 250


def test_missing_program(session, fake, tmp_path):
    client = session(str(tmp_path / "no-such-qmail-queue"))
    assert client.log_contains("is not executable")  # warned at start-up
    reply = client.send_message("alice@example.net", ["bob@example.org"], MESSAGE)
    assert reply == unable_to_queue("unable to exec qmail-queue")
    assert client.log_contains("error, cannot run " + str(tmp_path / "no-such-qmail-queue")
                               + ": No such file or directory")


def test_program_not_executable(session, fake, tmp_path):
    program = tmp_path / "qq"
    program.write_text("#!/bin/sh\nexit 0\n")
    os.chmod(program, 0o644)
    client = session(str(program))
    reply = client.send_message("alice@example.net", ["bob@example.org"], MESSAGE)
    assert reply == unable_to_queue("unable to exec qmail-queue")
    assert client.log_contains("Permission denied")


def test_program_killed_by_signal(session, fake, monkeypatch):
    monkeypatch.setenv("FAKE_QQ_MODE", "signal")
    client = session()
    reply = client.send_message("alice@example.net", ["bob@example.org"], MESSAGE)
    assert reply == unable_to_queue("qmail-queue killed by signal SIGKILL")
    assert client.log_contains("killed by signal SIGKILL")


def test_exit_zero_without_reading_is_not_queued(session, fake, monkeypatch):
    """A program that exits 0 without taking the message has not queued it."""
    monkeypatch.setenv("FAKE_QQ_MODE", "noread")
    client = session()
    reply = client.send_message("alice@example.net", ["bob@example.org"], big_message())
    assert reply == unable_to_queue("qmail-queue did not read the whole message and envelope")


def test_exit_code_wins_over_broken_pipe(session, fake, monkeypatch):
    monkeypatch.setenv("FAKE_QQ_MODE", "noread")
    monkeypatch.setenv("FAKE_QQ_EXIT", "55")
    client = session()
    reply = client.send_message("alice@example.net", ["bob@example.org"], big_message())
    assert (reply.code, reply.text) == (451, "4.3.0 Unable to queue message (55, unable to "
                                             "read a configuration file) (#4.3.0)")


@pytest.mark.parametrize("body", [MESSAGE, big_message()], ids=["waiting", "writing"])
def test_hanging_program_is_killed_at_the_timeout(session, fake, monkeypatch, body):
    monkeypatch.setenv("FAKE_QQ_MODE", "hang")
    client = session(f"{FAKE} timeout 1")
    started = time.monotonic()
    reply = client.send_message("alice@example.net", ["bob@example.org"], body)
    assert time.monotonic() - started < 10
    assert reply == unable_to_queue("qmail-queue timed out")
    pid = int(fake["pid"].read_bytes())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped


@pytest.mark.parametrize("args, error", [
    ("bin/qmail-queue", "must be an absolute path"),
    (f"{FAKE} timeout soon", "timeout is not a number"),
    (f"{FAKE} timeout", "Bad arguments"),
])
def test_bad_arguments_stop_start_up(make_app, fake, args, error):
    with pytest.raises(PluginError, match=error):
        make_app([f"queue/qmail-queue {args}"])
