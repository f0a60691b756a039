"""earlytalker: the greeting is held back ``wait`` seconds and a client that
talks meanwhile (or before the 354 with check-at DATA) is refused, deferred
or only logged; immune and well-known clients are not delayed."""

import time

import pytest

from conftest import PLUGIN_DIR, TEST_PLUGINS
from qpsmtpd.plugin import PluginError
from qpsmtpd.store import ip_key, open_store
from store_fixtures import write_evidence_plugin

WAIT = 0.3
EARLY = "Connecting host started transmitting before SMTP greeting"


@pytest.fixture
def connect(make_app, smtp_session, tmp_path):
    evidence = write_evidence_plugin(tmp_path / "testplugins")

    def factory(*plugins, early=None, files=None, **connection):
        """Connect; ``early`` is sent before the greeting could arrive.
        Returns (client, seconds until the greeting)."""
        config = {"rcpthosts": ["example.org"],
                  "store": f"sqlite:{tmp_path / 'db.sqlite'}"}
        config.update(files or {})
        app = make_app(list(plugins) + [f"capture {tmp_path / 'queue'}"], config,
                       plugin_dirs=[evidence, TEST_PLUGINS, PLUGIN_DIR])
        started = time.monotonic()
        client = smtp_session(app=app, read_greeting=False, **connection)
        if early:
            client.send(early)
        client.greeting = client.reply()
        return client, time.monotonic() - started
    return factory


def notes(client):
    return client.session.connection.notes


def test_patient_client_is_greeted_after_the_wait(connect):
    client, waited = connect(f"earlytalker wait {WAIT}")
    assert client.greeting.code == 220
    assert waited >= WAIT
    assert client.log_contains("(connect) earlytalker: pass, not spontaneous")
    assert "earlytalker" not in notes(client)


def test_early_talker_is_refused_and_disconnected(connect):
    client, waited = connect(f"earlytalker wait {WAIT}", early="EHLO spam.example\r\n")
    assert client.greeting == (550, [EARLY])
    assert client.closed()
    assert waited < WAIT        # no need to wait the full time
    assert notes(client)["earlytalker"] == 1
    assert notes(client)["karma"] == -1
    assert client.log_contains("(connect) earlytalker: fail, remote started talking "
                               "before we said hello")


def test_reject_type_temp(connect):
    client, _ = connect(f"earlytalker wait {WAIT} reject_type temp", early="HELO x\r\n")
    assert client.greeting == (450, [EARLY])
    assert client.closed()


@pytest.mark.parametrize("line", ["earlytalker wait 0.3 reject 0",
                                  "earlytalker wait 0.3 action log"])
def test_reject_0_only_logs(connect, line):
    client, _ = connect(line, early="EHLO early.example\r\n")
    assert client.greeting.code == 220
    # the early command is then read and answered normally
    assert client.reply().code == 250
    assert client.log_contains("earlytalker: fail, tolerated, remote started talking")
    assert notes(client)["karma"] == -1


def test_legacy_action_denysoft(connect):
    client, _ = connect("earlytalker wait 0.3 action denysoft", early="EHLO x\r\n")
    assert client.greeting == (450, [EARLY])


def test_reject_naughty_defers_to_naughty(connect):
    client, _ = connect(f"earlytalker wait {WAIT} reject naughty", "naughty reject mail",
                        early="EHLO early.example\r\n")
    assert client.greeting.code == 220
    assert client.reply().code == 250
    reply = client.cmd("MAIL FROM:<a@example.net>")
    assert reply == (550, [f"5.7.1 (earlytalker) {EARLY}"])
    # naughty uses earlytalker's reject_type (perm): the command is refused,
    # the connection stays
    assert client.cmd("NOOP").code == 250


def test_reject_naughty_with_disconnect(connect):
    client, _ = connect(f"earlytalker wait {WAIT} reject naughty reject_type disconnect",
                        "naughty reject mail", early="EHLO early.example\r\n")
    assert client.reply().code == 250
    assert client.cmd("MAIL FROM:<a@example.net>").code == 550
    assert client.closed()


def test_defer_reject_refuses_at_mail(connect):
    client, _ = connect(f"earlytalker wait {WAIT} defer-reject 1", "rcpt_ok",
                        early="EHLO early.example\r\n")
    assert client.greeting.code == 220
    assert client.reply().code == 250
    assert client.cmd("MAIL FROM:<a@example.net>") == (550, [f"5.7.1 {EARLY}"])
    assert client.cmd("MAIL FROM:<b@example.net>").code == 550
    assert notes(client)["karma"] == -1     # taken once per connection


def test_check_at_data(connect):
    client, waited = connect(f"earlytalker wait {WAIT} check-at DATA", "rcpt_ok")
    assert waited < WAIT                     # CONNECT is not checked then
    client.cmd("EHLO client.example.net")
    client.cmd("MAIL FROM:<a@example.net>")
    client.cmd("RCPT TO:<b@example.org>")
    client.send("DATA\r\nSubject: pipelined\r\n\r\nRSET\r\n.\r\n")
    assert client.reply() == (554, [f"5.7.1 {EARLY}"])
    assert client.closed()                   # the rest is never read as commands
    assert not client.log_contains("dispatching RSET")


def test_check_at_data_patient_client(connect):
    client, _ = connect(f"earlytalker wait {WAIT} check-at CONNECT check-at DATA", "rcpt_ok")
    assert client.greeting.code == 220
    client.cmd("EHLO client.example.net")
    client.cmd("MAIL FROM:<a@example.net>")
    client.cmd("RCPT TO:<b@example.org>")
    started = time.monotonic()
    assert client.cmd("DATA").code == 354
    assert time.monotonic() - started >= WAIT
    client.send("Subject: x\r\n\r\nbody\r\n.\r\n")
    assert client.reply().code == 250


def test_relay_client_is_not_delayed(connect):
    client, waited = connect("earlytalker wait 2", relay_client=True, early="EHLO x\r\n")
    assert client.greeting.code == 220
    assert waited < 1
    assert client.log_contains("(connect) earlytalker: skip, relay client")


def test_good_history_is_not_delayed(connect, tmp_path):
    open_store(f"sqlite:{tmp_path / 'db.sqlite'}", "karma").set(ip_key("192.0.2.10"), "0:0:6:6")
    client, waited = connect("karma", "earlytalker wait 2")
    assert client.greeting.code == 220 and waited < 1
    assert client.log_contains("(connect) earlytalker: skip, karma 6")


def test_per_connection_wait_override(connect):
    client, waited = connect("evidence note.earlytalker_wait 0.05", "earlytalker wait 5")
    assert client.greeting.code == 220
    assert waited < 1


@pytest.mark.parametrize("line", ["earlytalker wait", "earlytalker wait soon"])
def test_bad_arguments_stop_the_start(make_app, line):
    with pytest.raises(PluginError):
        make_app([line])
