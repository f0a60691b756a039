"""bogus_bounce: a null-sender message needs one recipient and no
Return-Path."""

import pytest

from conftest import captured_messages
from qpsmtpd.plugin import PluginError

BOUNCE = ("From: MAILER-DAEMON@sender.example\r\nSubject: failure notice\r\n\r\n"
          "your message could not be delivered\r\n.\r\n")


@pytest.fixture
def session(plugin_session, queue_dir):
    def factory(args=""):
        return plugin_session(["returns rcpt OK", f"bogus_bounce {args}".strip(),
                               f"capture {queue_dir}"])
    return factory


def bounce(client, recipients, text=BOUNCE, sender=""):
    return client.send_message(sender, recipients, text)


def test_real_bounce_passes(session):
    client = session("deny")
    assert bounce(client, ["b@example.test"]).code == 250
    assert client.log_contains("bogus_bounce: pass, single recipient, empty Return-Path")


def test_mail_with_a_sender_is_not_looked_at(session):
    client = session("deny")
    assert bounce(client, ["b@example.test", "c@example.test"], sender="a@x.example").code == 250
    assert client.log_contains("bogus_bounce: pass, not a null sender")


def test_bounce_to_two_recipients_is_refused_with_deny(session, queue_dir):
    client = session("deny")
    reply = bounce(client, ["b@example.test", "c@example.test"])
    assert reply == (552, ["5.7.1 fail, this bounce message does not have 1 recipient"])
    assert captured_messages(queue_dir) == []
    assert client.log_contains("bogus_bounce: fail, bogus bounce to: "
                               "b@example.test,c@example.test")


def test_denysoft_defers(session):
    client = session("denysoft")
    assert bounce(client, ["b@example.test", "c@example.test"]).code == 452


@pytest.mark.parametrize("args", ["log", "", "reject 0"])
def test_log_only(session, queue_dir, args):
    client = session(args)
    assert bounce(client, ["b@example.test", "c@example.test"]).code == 250
    assert client.log_contains("bogus_bounce: fail, tolerated, bogus bounce to:")


def test_return_path_in_a_bounce(session):
    client = session("reject 1 reject_type temp")
    text = "Return-Path: <someone@x.example>\r\n" + BOUNCE
    assert bounce(client, ["b@example.test"]).code == 250
    assert bounce(client, ["b@example.test"], text) == (
        452, ["4.7.1 a bounce return path must be empty (RFC 3834)"])


def test_empty_return_path_is_fine(session):
    client = session("deny")
    assert bounce(client, ["b@example.test"], "Return-Path: <>\r\n" + BOUNCE).code == 250


def test_unknown_legacy_word_stops_the_start(make_app):
    with pytest.raises(PluginError, match="unknown action"):
        make_app(["bogus_bounce refuse"])
