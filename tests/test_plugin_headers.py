"""headers: required and singular header fields, the Date window, and the
reject / naughty / karma rules."""

import email.utils
import time

import pytest

from conftest import captured_messages
from qpsmtpd.plugin import PluginError

DAY = 24 * 3600


def data(*fields, body="hello"):
    """DATA text: the header ``fields`` (lines), an empty line, ``body``."""
    return "".join(f + "\r\n" for f in fields) + f"\r\n{body}\r\n.\r\n"


def date(days_from_now=0):
    return "Date: " + email.utils.formatdate(time.time() + days_from_now * DAY,
                                             localtime=True)


GOOD = data("From: a@sender.example", date(), "Subject: hi", "Message-Id: <1@x.example>")


@pytest.fixture
def session(plugin_session, queue_dir):
    def factory(args="", extra=(), **connection):
        return plugin_session(["returns rcpt OK", f"headers {args}".strip(), *extra,
                               f"capture {queue_dir}"], **connection)
    return factory


def send(client, text, helo="EHLO client.example.net"):
    return client.send_message("a@sender.example", ["b@example.test"], text, helo=helo)


def test_good_message_passes(session, queue_dir):
    client = session("require From,Date future 2 past 15")
    assert send(client, GOOD).code == 250
    assert client.log_contains("(data_post) headers: pass")
    assert len(captured_messages(queue_dir)) == 1


def test_missing_from_is_rejected_by_default(session, queue_dir):
    client = session()
    reply = send(client, data(date(), "Subject: no sender"))
    assert reply == (552, ["5.7.1 We require a valid From header"])
    assert captured_messages(queue_dir) == []
    assert client.log_contains("headers: fail, no From header")
    assert client.log_contains("headers: karma -1 (-1)")
    assert client.log_contains("headers: fail, RFC 5322 validation errors")


def test_empty_from_counts_as_missing(session):
    client = session()
    assert send(client, data("From: ", "Subject: x")).code == 552


def test_every_problem_is_one_reply_line(session):
    client = session("require From,Date,Message-Id")
    reply = send(client, data("Subject: one", "Subject: two", "To: a@x.example",
                              "To: b@x.example"))
    assert reply == (552, [
        "5.7.1 We require a valid From header",
        "5.7.1 We require a valid Date header",
        "5.7.1 We require a valid Message-Id header",
        "5.7.1 Only one To header allowed. See RFC 5322, Section 3.6",
        "5.7.1 Only one Subject header allowed. See RFC 5322, Section 3.6"])
    assert client.log_contains("headers: karma -1 (-5)")


def test_singular_headers_compare_case_insensitively(session):
    client = session()
    reply = send(client, data("From: a@x.example", "Message-ID: <1@x>", "message-id: <2@x>"))
    assert reply == (552, ["5.7.1 Only one Message-Id header allowed. See RFC 5322, "
                           "Section 3.6"])


def test_reject_type_temp(session):
    client = session("reject_type temp")
    assert send(client, data("Subject: x")) == (452, ["4.7.1 We require a valid From header"])


def test_reject_0_only_logs_and_defers_nothing(session, queue_dir):
    """The sample configuration's line; the original still deferred the
    rejection to naughty, so the message was refused anyway."""
    client = session("reject 0 reject_type temp require From,Date future 2 past 15")
    assert send(client, data("Subject: x")).code == 250
    assert client.log_contains("headers: fail, tolerated, RFC 5322 validation errors")
    assert not client.session.connection.notes.get("naughty")


def test_reject_naughty_defers(session, queue_dir):
    client = session("reject naughty")
    assert send(client, data("Subject: x")).code == 250
    assert client.session.connection.notes["naughty"] == [
        "(headers) We require a valid From header"]
    assert client.log_contains("headers: fail, NAUGHTY, RFC 5322 validation errors")


@pytest.mark.parametrize("days, args, reply", [
    (-3, "past 2", "The Date header is too far in the past"),
    (-1, "past 2", None),
    (3, "future 2", "The Date header is too far in the future"),
    (1, "future 2", None),
    (-30, "future 2", None),          # only the future is checked
    (6, "past 15", None),             # only the past is checked
])
def test_date_window(session, days, args, reply):
    client = session(args)
    result = send(client, data("From: a@x.example", date(days)))
    if reply is None:
        assert result.code == 250
    else:
        assert result == (552, [f"5.7.1 {reply}"])
        assert client.log_contains(f"headers: fail, {reply}")
        assert client.log_contains("headers: karma -1 (-1)")


def test_unparseable_date_is_skipped(session):
    client = session("past 1 future 1")
    assert send(client, data("From: a@x.example", "Date: last tuesday")).code == 250
    assert client.log_contains("headers: skip, date not parseable (last tuesday)")


def test_date_and_header_problems_together(session):
    client = session("past 1")
    reply = send(client, data(date(-5), "Subject: x"))
    assert reply.lines == ["5.7.1 We require a valid From header",
                           "5.7.1 The Date header is too far in the past"]


def test_message_without_header_fields(session):
    client = session()
    assert send(client, "just a body line\r\n.\r\n") == (
        552, ["5.7.1 We require a valid From header"])


def test_empty_message(session):
    client = session()
    assert send(client, ".\r\n") == (552, ["5.7.1 You must send some data first"])


def test_immune_sessions_are_not_checked(session):
    client = session(relay_client=True)
    assert send(client, data("Subject: x")).code == 250
    assert client.log_contains("headers: skip, relay client")


def test_helo_session_reply(session):
    client = session()
    reply = send(client, data("Subject: x"), helo="HELO client.example.net")
    assert reply == (552, ["We require a valid From header"])


@pytest.mark.parametrize("args", ["past soon", "future", "require"])
def test_bad_arguments_stop_the_start(make_app, args):
    with pytest.raises(PluginError):
        make_app([f"headers {args}"])
