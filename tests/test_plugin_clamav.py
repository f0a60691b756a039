"""virus/clamav: the command-line scanner (Debian's clamdscan, talking to
the test clamd) fed the message on its standard input."""

import os
import shutil
import time

import pytest

from conftest import captured_messages, strip_trace
from daemon_fixtures import EICAR, EICAR_NAME, clamd, find_program  # noqa: F401 (fixture)
from qpsmtpd.plugin import PluginError

SENDER = "alice@sender.example"
RECIPIENT = "bob@example.test"
CLAMDSCAN = find_program("clamdscan")

CLEAN = ("From: Alice <alice@sender.example>\r\nSubject: the report\r\n\r\n"
         "Please find the report below.\r\n.\r\n")
INFECTED = ("From: a@sender.example\r\nSubject: test\r\n\r\nthe test string:\r\n"
            + EICAR.decode() + "\r\n.\r\n")


def original(data):
    return data[:-3].replace("\r\n", "\n").encode()


@pytest.fixture
def session(plugin_session, queue_dir, clamd):  # noqa: F811
    if not CLAMDSCAN:
        pytest.skip("clamdscan (Debian package clamdscan) not installed; "
                    "`make test` installs it as root")

    def factory(args="", scanner=CLAMDSCAN, conf=clamd.config_path):
        line = f"virus/clamav clamscan_path={scanner} clamd_conf={conf} {args}".strip()
        return plugin_session(["returns rcpt OK", line, f"capture {queue_dir}"])
    return factory


def test_clean_message_gets_x_virus_checked_at_the_end(session, queue_dir):
    client = session()
    assert client.send_message(SENDER, [RECIPIENT], CLEAN).code == 250
    assert strip_trace(captured_messages(queue_dir)[0]) == (
        b"From: Alice <alice@sender.example>\nSubject: the report\n"
        b"X-Virus-Checked: Checked by ClamAV on mx.example.org\n"
        b"\nPlease find the report below.\n")
    assert client.log_contains("(data_post) virus::clamav: pass, clean")


def test_virus_is_tagged_by_default(session, queue_dir):
    client = session()
    assert client.send_message(SENDER, [RECIPIENT], INFECTED).code == 250
    header, _, _ = strip_trace(captured_messages(queue_dir)[0]).partition(b"\n\n")
    assert header.endswith(b"X-Virus-Found: Yes\nX-Virus-Details: "
                           + EICAR_NAME.encode())
    assert client.log_contains(f"virus::clamav: fail, Virus(es) found: {EICAR_NAME}")


def test_action_reject(session, queue_dir):
    client = session("action=reject")
    assert client.send_message(SENDER, [RECIPIENT], INFECTED) == (
        552, [f"5.7.1 Virus Found: {EICAR_NAME}"])
    assert captured_messages(queue_dir) == []


def test_message_over_max_size_is_not_scanned(session, queue_dir):
    client = session("action=reject max_size=100")
    assert client.send_message(SENDER, [RECIPIENT], INFECTED).code == 250
    assert client.log_contains("virus::clamav: skip, too large (")


def test_scanner_failure_defers(session, tmp_path):
    """clamdscan cannot reach a clamd: exit code 2."""
    conf = tmp_path / "broken-clamd.conf"
    conf.write_text(f"LocalSocket {tmp_path / 'nothing.sock'}\n")
    client = session("action=reject", conf=conf)
    assert client.send_message(SENDER, [RECIPIENT], CLEAN) == (
        452, ["4.7.1 Message denied temporarily"])
    assert client.log_contains("virus::clamav: error, ClamAV error: ")


def test_declined_on_fail_accepts(session, tmp_path, queue_dir):
    conf = tmp_path / "broken-clamd.conf"
    conf.write_text(f"LocalSocket {tmp_path / 'nothing.sock'}\n")
    client = session("action=reject declined_on_fail", conf=conf)
    assert client.send_message(SENDER, [RECIPIENT], INFECTED).code == 250
    assert strip_trace(captured_messages(queue_dir)[0]) == original(INFECTED)


def test_hanging_scanner_is_killed(session, tmp_path):
    """A stand-in scanner (a shell script) that never finishes."""
    script = tmp_path / "clamdscan"
    script.write_text("#!/bin/sh\nexec sleep 30\n")
    script.chmod(0o755)
    client = session("timeout=1", scanner=script)
    started = time.monotonic()
    assert client.send_message(SENDER, [RECIPIENT], CLEAN).code == 452
    assert time.monotonic() - started < 5
    assert client.log_contains("no answer within 1 s")


def test_unknown_argument_is_logged_and_ignored(session):
    client = session("action=reject tmp_dir=/tmp back_compat frobnicate=1")
    assert client.log_contains("Unrecognized argument 'frobnicate=1' to clamav plugin")
    assert client.send_message(SENDER, [RECIPIENT], INFECTED).code == 552


def test_leading_path_argument(plugin_session, queue_dir, clamd):  # noqa: F811
    if not CLAMDSCAN:
        pytest.skip("clamdscan not installed")
    client = plugin_session(["returns rcpt OK",
                             f"virus/clamav {CLAMDSCAN} clamd_conf={clamd.config_path} "
                             "action=reject", f"capture {queue_dir}"])
    assert client.send_message(SENDER, [RECIPIENT], INFECTED).code == 552


def test_missing_scanner_stops_the_start(make_app, tmp_path):
    with pytest.raises(PluginError, match="is not an executable file"):
        make_app([f"virus/clamav clamscan_path={tmp_path}/clamscan"])


def test_clamscan_gets_no_config_file_option(make_app):
    clamscan = shutil.which("clamscan") or "/usr/bin/clamscan"
    if not os.access(clamscan, os.X_OK):
        pytest.skip("clamscan not installed")
    app = make_app([f"virus/clamav clamscan_path={clamscan}"])
    plugin = app.dispatcher.plugins[-1]
    assert plugin.command() == [clamscan, "--stdout", "--no-summary", "-"]
