"""queue/exim-bsmtp against a program run as a real subprocess.

Exim itself is not installed for the tests: installing it would put a
second MTA (with its own daemon, queue runner and port 25 listener) on the
machine running the suite. ``tests/bin/fake-rsmtp`` stands in for
``rsmtp``/``exim -bS``: it reads the batched SMTP on its standard input,
records it and its arguments byte for byte, prints what the test asks
(Exim's error replies) and exits with the chosen code.
"""

import os
import time

import pytest

from conftest import strip_trace
from qpsmtpd.plugin import PluginError

FAKE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bin", "fake-rsmtp")
NAME = "queue::exim_2dbsmtp"

MESSAGE = (
    "Subject: hello\r\n"
    "Message-Id: <123@example.net>\r\n"
    "\r\n"
    "..one dot\r\n"
    "...two dots\r\n"
    "last line\r\n"
    ".\r\n"
)
# the reply to the dot (after EHLO) when the plugin failed on its side
INTERNAL_ERROR = (451, ["4.3.0 Internal error enqueuing mail"])


@pytest.fixture
def fake(tmp_path, monkeypatch):
    files = {"stdin": tmp_path / "stdin", "argv": tmp_path / "argv"}
    monkeypatch.setenv("FAKE_RSMTP_STDIN", str(files["stdin"]))
    monkeypatch.setenv("FAKE_RSMTP_ARGV", str(files["argv"]))
    for name in ("FAKE_RSMTP_OUTPUT", "FAKE_RSMTP_EXIT", "FAKE_RSMTP_MODE"):
        monkeypatch.delenv(name, raising=False)
    return files


@pytest.fixture
def session(plugin_session):
    def factory(args=f"exim_path {FAKE}", config=None):
        return plugin_session(["returns rcpt OK", f"queue/exim-bsmtp {args}"], config)

    return factory


def spool_files(tmp_path):
    return [name for name in os.listdir(tmp_path / "spool") if name.startswith("exim-bsmtp.")]


def test_bsmtp_bytes(session, fake, tmp_path):
    client = session()
    reply = client.send_message("alice@example.net",
                                ["bob@example.org", "carol@example.org"], MESSAGE)
    assert (reply.code, reply.text) == (250, "2.0.0 Queued!")
    assert fake["argv"].read_bytes() == b"-bS"
    commands = (b"HELO mx.example.org\n"
                b"MAIL FROM:<alice@example.net>\n"
                b"RCPT TO:<bob@example.org>\n"
                b"RCPT TO:<carol@example.org>\n"
                b"DATA\n")
    sent = fake["stdin"].read_bytes()
    assert sent.startswith(commands), sent
    assert strip_trace(sent[len(commands):]) == (
        b"Subject: hello\nMessage-Id: <123@example.net>\n\n"
        b"..one dot\n...two dots\nlast line\n"
        b".\nQUIT\n")
    assert spool_files(tmp_path) == []
    assert client.log_contains(f"{NAME}: pass, Enqueued to exim via BSMTP")


def test_null_sender_and_body_without_final_newline(session, fake):
    client = session()
    reply = client.send_message("", ["postmaster"], "Subject: x\r\n\r\n.\r\n")
    assert reply.code == 250
    sent = fake["stdin"].read_bytes()
    assert sent.startswith(b"HELO mx.example.org\nMAIL FROM:<>\nRCPT TO:<postmaster>\nDATA\n")
    assert sent.endswith(b"Subject: x\n\n.\nQUIT\n")


@pytest.mark.parametrize("output, code, text", [
    ("550 5.1.1 <bob@example.org>: unknown user\\n", 552,
     "5.1.1 <bob@example.org>: unknown user"),
    ("421 lost connection\\n", 451, "4.3.0 lost connection"),
])
def test_exim_error_reply(session, fake, monkeypatch, tmp_path, output, code, text):
    monkeypatch.setenv("FAKE_RSMTP_OUTPUT", output)
    monkeypatch.setenv("FAKE_RSMTP_EXIT", "1")
    client = session()
    reply = client.send_message("alice@example.net", ["bob@example.org"], MESSAGE)
    assert (reply.code, reply.text) == (code, text)
    assert client.log_contains(f"{NAME}: exim: {output[:-2]}")
    assert client.log_contains("error, BSMTP enqueue failed; response")
    assert spool_files(tmp_path) == []


def test_nonzero_exit(session, fake, monkeypatch):
    monkeypatch.setenv("FAKE_RSMTP_EXIT", "2")
    client = session()
    reply = client.send_message("alice@example.net", ["bob@example.org"], MESSAGE)
    assert reply == INTERNAL_ERROR
    assert client.log_contains(f"error, BSMTP enqueue failed; exitcode 2 from {FAKE} -bS")


def test_killed_by_signal(session, fake, monkeypatch):
    monkeypatch.setenv("FAKE_RSMTP_MODE", "signal")
    client = session()
    reply = client.send_message("alice@example.net", ["bob@example.org"], MESSAGE)
    assert reply == INTERNAL_ERROR
    assert client.log_contains("killed by signal SIGKILL")


def test_timeout(session, fake, monkeypatch, tmp_path):
    monkeypatch.setenv("FAKE_RSMTP_MODE", "hang")
    client = session(f"exim_path {FAKE} timeout 1")
    started = time.monotonic()
    reply = client.send_message("alice@example.net", ["bob@example.org"], MESSAGE)
    assert time.monotonic() - started < 10
    assert reply == INTERNAL_ERROR
    assert client.log_contains("timed out after 1 s")
    assert spool_files(tmp_path) == []


def test_missing_exim(session, fake, tmp_path):
    client = session(f"exim_path {tmp_path}/no-exim")
    assert client.log_contains(f"Could not find exim at {tmp_path}/no-exim")
    reply = client.send_message("alice@example.net", ["bob@example.org"], MESSAGE)
    assert reply == INTERNAL_ERROR
    assert client.log_contains(f"error, Could not execute {tmp_path}/no-exim")
    assert spool_files(tmp_path) == []


def test_spool_dir_not_writable(session, fake, tmp_path):
    # the engine keeps this message in memory, so only the plugin needs the dir
    client = session(config={"size_threshold": "1000000"})
    spool = tmp_path / "spool"
    os.rename(spool, tmp_path / "spool.moved")
    spool.write_bytes(b"")  # a file where the directory was
    reply = client.send_message("alice@example.net", ["bob@example.org"], MESSAGE)
    assert reply == INTERNAL_ERROR
    assert client.log_contains("error, Couldn't create tempfile")


@pytest.mark.parametrize("args, error", [
    (f"exim_path {FAKE} timeout never", "timeout is not a number"),
    ("exim_path", "Bad arguments"),
])
def test_bad_arguments_stop_start_up(make_app, args, error):
    with pytest.raises(PluginError, match=error):
        make_app([f"queue/exim-bsmtp {args}"])
