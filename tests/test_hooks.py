"""Every hook's return codes and the reply the client sees (§1.3, §2).

Each row: the plugins loaded (the test plugin ``returns HOOK CODE [msg]``
from tests/plugins), the commands sent, and the replies expected. A reply
of ``None`` means "no reply to this command": the next command's reply is
read instead. ``CLOSED`` means the server closed the connection.
"""

import pytest

from conftest import PLUGIN_DIR, TEST_PLUGINS

CLOSED = "closed"
MESSAGE = "Subject: test\r\n\r\nbody\r\n.\r\n"
ACCEPT = ["returns rcpt OK", "returns queue OK"]


@pytest.fixture
def session(plugin_session):
    return plugin_session


def converse(client, steps):
    """Send each command; check its reply (code, text fragment) or absence."""
    for command, expected in steps:
        if command is not None:
            client.send(command if command.endswith("\n") else command + "\r\n")
        if expected is None:
            continue
        if expected == CLOSED:
            assert client.closed(), f"connection still open after {command!r}"
            return
        reply = client.reply()
        code, fragment = expected
        assert reply.code == code, (command, reply)
        assert fragment in reply.text, (command, reply)


# -- connect ----------------------------------------------------------------

@pytest.mark.parametrize("verdict, code, text, closes", [
    ("DENY", 550, "Connection from you denied, bye bye.", True),
    ("DENY_DISCONNECT", 550, "Connection from you denied, bye bye.", True),
    ("DENYSOFT", 450, "Connection from you temporarily denied, bye bye.", True),
    ("DENYSOFT_DISCONNECT", 450, "Connection from you temporarily denied, bye bye.", True),
    ("DENY go away", 550, "go away", True),
    ("OK", 220, "ESMTP qpsmtpd", False),
    ("DECLINED", 220, "ESMTP qpsmtpd", False),
    ("none", 220, "ESMTP qpsmtpd", False),
    ("bogus", 450, "Internal error - try again later", True),
    ("raise", 450, "Internal error - try again later", True),
])
def test_connect(session, verdict, code, text, closes):
    client = session([f"returns connect {verdict}"], read_greeting=False)
    reply = client.reply()
    assert (reply.code, reply.text) == (code, reply.text) and text in reply.text
    if closes:
        assert client.closed()
    else:
        assert client.cmd("NOOP").code == 250


def test_connect_done_sends_no_greeting(session):
    client = session(["returns connect DONE"], read_greeting=False)
    assert client.cmd("NOOP") == (250, ["OK"])


def test_connect_crash_is_logged_with_traceback(session):
    client = session(["returns connect raise"], read_greeting=False)
    client.reply()
    assert client.log_contains("FATAL PLUGIN ERROR [returns]: RuntimeError")
    assert client.log_contains("Traceback (most recent call last)")


def test_bogus_results_are_logged_and_fail_like_a_crash(session):
    """A value that is not a return code is a broken plugin: logged, and a
    temporary failure like a crash (the reference treated it as DECLINED)."""
    client = session(["returns connect bogus"])
    assert client.log_contains("Plugin returns, hook connect returned 123456")
    assert client.greeting == (450, ["Internal error - try again later"])
    client = session(["returns rcpt bogus"])
    client.cmd("EHLO c.example")
    client.cmd("MAIL FROM:<a@b.example>")
    assert client.cmd("RCPT TO:<c@d.example>") == (450, ["4.7.1 Internal error - try again later"])
    assert client.cmd("NOOP") == (250, ["2.0.0 OK"])


def test_none_still_means_declined(session):
    client = session(["returns connect none"])
    assert client.greeting.code == 220


def test_smtpgreeting(session):
    client = session([], config={"smtpgreeting": "Hello there"})
    assert client.greeting == (220, ["Hello there ESMTP"])
    client = session([], config={"smtpgreeting": "mx ESMTP ready"})
    assert client.greeting == (220, ["mx ESMTP ready"])


# -- helo / ehlo ----------------------------------------------------------------

@pytest.mark.parametrize("verb", ["HELO", "EHLO"])
@pytest.mark.parametrize("verdict, steps", [
    ("DENY", [(None, (550, "Denied")), ("NOOP", (250, "OK"))]),
    ("DENY no_such_name", [(None, (550, "no_such_name"))]),
    ("DENYSOFT", [(None, (450, "Temporarily denied"))]),
    ("DENY_DISCONNECT", [(None, (550, "Denied")), (None, CLOSED)]),
    ("DENYSOFT_DISCONNECT", [(None, (450, "Temporarily denied")), (None, CLOSED)]),
    ("DONE", [(None, None), ("NOOP", (250, "OK"))]),
    ("OK", [(None, (250, "Hi client.example.net [192.0.2.10]"))]),
    ("DECLINED", [(None, (250, "Hi client.example.net [192.0.2.10]"))]),
    ("raise", [(None, (450, "Internal error"))]),
])
def test_helo_ehlo(session, verb, verdict, steps):
    client = session([f"returns {verb.lower()} {verdict}"])
    client.send(f"{verb} client.example.net\r\n")
    converse(client, steps)


def test_helo_reply_and_repeat(session):
    client = session([])
    assert client.cmd("HELO a.example") == (
        250, ["mx.example.org Hi client.example.net [192.0.2.10]; I am so happy to meet you."])
    # RFC 5321 4.1.4: a second greeting resets the session (qpsmtpd: 503)
    client.cmd("MAIL FROM:<a@b.example>")
    reply = client.cmd("EHLO b.example")
    assert reply.code == 250 and "PIPELINING" in reply.lines
    assert client.session.connection.hello_host == "b.example"
    assert client.cmd("RCPT TO:<c@d.example>") == (503, ["5.5.1 Use MAIL before RCPT"])


def test_ehlo_reply_lines(session):
    client = session([], config={"databytes": "1000"})
    reply = client.cmd("EHLO a.example")
    assert reply == (250, ["mx.example.org Hi client.example.net [192.0.2.10]",
                           "PIPELINING", "8BITMIME", "SIZE 1000", "ENHANCEDSTATUSCODES"])


def test_helo_without_host(session):
    client = session([])
    assert client.cmd("HELO") == (501, ["helo requires domain/address - see RFC-2821 4.1.1.1"])
    assert client.cmd("EHLO ") == (501, ["ehlo requires domain/address - see RFC-2821 4.1.1.1"])


# -- mail ------------------------------------------------------------------------

@pytest.mark.parametrize("verdict, steps", [
    ("DENY", [(None, (550, "<a@b.example>, denied"))]),
    ("DENY you are bad", [(None, (550, "5.7.1 you are bad"))]),
    ("DENYSOFT", [(None, (450, "4.7.1 <a@b.example>, temporarily denied"))]),
    ("DENY_DISCONNECT", [(None, (550, "<a@b.example>, denied")), (None, CLOSED)]),
    ("DENYSOFT_DISCONNECT", [(None, (421, "<a@b.example>, temporarily denied")),
                             (None, CLOSED)]),
    ("DONE", [(None, None), ("NOOP", (250, "OK"))]),
    ("OK", [(None, (250, "2.1.0 <a@b.example>, sender OK - how exciting"))]),
    ("DECLINED", [(None, (250, "<a@b.example>, sender OK"))]),
    ("raise", [(None, (450, "4.7.1 Internal error - try again later"))]),
])
def test_mail(session, verdict, steps):
    client = session([f"returns mail {verdict}"])
    client.cmd("EHLO client.example.net")
    client.send("MAIL FROM:<a@b.example>\r\n")
    converse(client, steps)


def test_mail_deny_is_logged(session):
    client = session(["returns mail DENY not here"])
    client.cmd("EHLO c.example")
    client.cmd("MAIL FROM:<a@b.example>")
    assert client.log_contains("deny mail from <a@b.example> (not here)")


def test_mail_after_denied_mail_is_not_nested(session):
    client = session(["returns mail DENY"])
    client.cmd("EHLO c.example")
    assert client.cmd("MAIL FROM:<a@b.example>").code == 550
    assert client.cmd("MAIL FROM:<a@b.example>").code == 550


# -- rcpt -------------------------------------------------------------------------

@pytest.mark.parametrize("verdict, steps", [
    ("DENY", [(None, (550, "relaying denied"))]),
    ("DENY no such user", [(None, (550, "no such user"))]),
    ("DENYSOFT", [(None, (450, "relaying denied"))]),
    ("DENY_DISCONNECT", [(None, (550, "delivery denied")), (None, CLOSED)]),
    ("DENYSOFT_DISCONNECT", [(None, (421, "relaying denied")), (None, CLOSED)]),
    ("DONE", [(None, None), ("NOOP", (250, "OK"))]),
    ("OK", [(None, (250, "2.1.5 <c@d.example>, recipient ok"))]),
    ("DECLINED", [(None, (450, "No plugin decided if relaying is allowed"))]),
    ("raise", [(None, (450, "Internal error"))]),
])
def test_rcpt(session, verdict, steps):
    client = session([f"returns rcpt {verdict}"])
    client.cmd("EHLO client.example.net")
    client.cmd("MAIL FROM:<a@b.example>")
    client.send("RCPT TO:<c@d.example>\r\n")
    converse(client, steps)


def test_rcpt_with_no_plugin_is_refused(session):
    client = session([])
    client.cmd("EHLO c.example")
    client.cmd("MAIL FROM:<a@b.example>")
    assert client.cmd("RCPT TO:<c@d.example>") == (
        450, ["4.7.1 No plugin decided if relaying is allowed"])


# -- data ---------------------------------------------------------------------------

def _to_data(client):
    client.cmd("EHLO client.example.net")
    assert client.cmd("MAIL FROM:<a@b.example>").code == 250
    assert client.cmd("RCPT TO:<c@d.example>").code == 250


@pytest.mark.parametrize("verdict, steps", [
    ("DENY", [(None, (554, "Message denied")), ("MAIL FROM:<x@y.example>", (250, "sender OK"))]),
    ("DENYSOFT", [(None, (451, "Message denied temporarily"))]),
    ("DENY_DISCONNECT", [(None, (554, "Message denied")), (None, CLOSED)]),
    ("DENYSOFT_DISCONNECT", [(None, (451, "Message denied temporarily")), (None, CLOSED)]),
    ("DONE", [(None, None), ("NOOP", (250, "OK"))]),
    ("OK", [(None, (354, "go ahead"))]),
    ("DECLINED", [(None, (354, "go ahead"))]),
    ("raise", [(None, (451, "Internal error"))]),
])
def test_data(session, verdict, steps):
    client = session(ACCEPT + [f"returns data {verdict}"])
    _to_data(client)
    client.send("DATA\r\n")
    converse(client, steps)


def test_data_sequence(session):
    client = session(ACCEPT)
    client.cmd("EHLO c.example")
    assert client.cmd("DATA") == (503, ["5.5.1 MAIL first"])
    client.cmd("MAIL FROM:<a@b.example>")
    assert client.cmd("DATA") == (503, ["5.5.1 RCPT first"])


@pytest.mark.parametrize("hook, verdict, steps", [
    ("data_headers_end", "DENY_DISCONNECT", [(None, (554, "Message denied")), (None, CLOSED)]),
    ("data_headers_end", "DENYSOFT_DISCONNECT", [(None, (421, "Message denied temporarily")),
                                                 (None, CLOSED)]),
    ("data_headers_end", "DENY", [(None, (250, "Queued"))]),
    ("data_headers_end", "DENYSOFT", [(None, (250, "Queued"))]),
    ("data_headers_end", "raise", [(None, (451, "Internal error"))]),
    ("data_headers_end", "OK", [(None, (250, "Queued"))]),
    ("data_headers_end", "DONE", [(None, (250, "Queued"))]),
    ("data_post_headers", "DENY_DISCONNECT", [(None, (250, "Queued"))]),
    ("data_post_headers", "DENY", [(None, (250, "Queued"))]),
    ("data_post_headers", "raise", [(None, (451, "Internal error"))]),
    ("data_post", "DENY", [(None, (552, "Message denied")), ("NOOP", (250, "OK"))]),
    ("data_post", "DENY spam", [(None, (552, "5.7.1 spam"))]),
    ("data_post", "DENYSOFT", [(None, (452, "Message denied temporarily"))]),
    ("data_post", "DENY_DISCONNECT", [(None, (552, "Message denied")), (None, CLOSED)]),
    ("data_post", "DENYSOFT_DISCONNECT", [(None, (452, "Message denied temporarily")),
                                          (None, CLOSED)]),
    ("data_post", "DONE", [(None, None), ("NOOP", (250, "OK"))]),
    ("data_post", "OK", [(None, (250, "Queued"))]),
    ("data_post", "raise", [(None, (452, "Internal error"))]),
    ("queue_pre", "DONE", [(None, None), ("NOOP", (250, "OK"))]),
    ("queue_pre", "DENY", [(None, (451, "Internal error"))]),
    ("queue_pre", "OK", [(None, (250, "Queued"))]),
    ("queue_pre", "raise", [(None, (451, "Internal error"))]),
    ("queue_post", "DECLINED", [(None, (250, "Queued")), ("NOOP", (250, "OK"))]),
    ("queue_post", "DENY", [(None, (250, "Queued")), ("NOOP", (250, "OK"))]),
    ("queue_post", "raise", [(None, (250, "Queued")), ("NOOP", (250, "OK"))]),
])
def test_data_phase_hooks(session, hook, verdict, steps):
    client = session([f"returns {hook} {verdict}"] + ACCEPT)
    _to_data(client)
    assert client.cmd("DATA").code == 354
    client.send(MESSAGE)
    converse(client, steps)


@pytest.mark.parametrize("verdict, code, text", [
    ("OK", 250, "2.0.0 Queued"),
    ("OK Queued! 1234", 250, "2.0.0 Queued! 1234"),
    ("DENY", 552, "Message denied"),
    ("DENYSOFT", 452, "Message denied temporarily"),
    ("DECLINED", 451, "Queuing declined or disabled; try again later"),
    ("DENY_DISCONNECT", 451, "Queuing declined or disabled"),
    ("DENYSOFT_DISCONNECT", 451, "Queuing declined or disabled"),
    ("raise", 452, "Internal error - try again later"),
    ("none", 451, "Queuing declined or disabled"),
])
def test_queue(session, verdict, code, text):
    client = session(["returns rcpt OK", f"returns queue {verdict}"])
    _to_data(client)
    assert client.cmd("DATA").code == 354
    client.send(MESSAGE)
    reply = client.reply()
    assert reply.code == code and text in reply.text


def test_no_queue_plugin_means_451(session):
    client = session(["returns rcpt OK"])
    _to_data(client)
    client.cmd("DATA")
    client.send(MESSAGE)
    assert client.reply() == (451, ["4.3.0 Queuing declined or disabled; try again later"])


def test_queue_done_sends_nothing(session):
    client = session(["returns rcpt OK", "returns queue DONE"])
    _to_data(client)
    client.cmd("DATA")
    client.send(MESSAGE)
    assert client.cmd("NOOP") == (250, ["2.0.0 OK"])


# -- the small verbs ------------------------------------------------------------------

@pytest.mark.parametrize("hook, command, verdict, steps", [
    ("vrfy", "VRFY <foo@bar>", "DECLINED",
     [(None, (252, "Just try sending a mail and we'll see how it turns out ..."))]),
    ("vrfy", "VRFY x", "OK", [(None, (250, "User OK"))]),
    ("vrfy", "VRFY x", "DENY", [(None, (554, "Access Denied"))]),
    ("vrfy", "VRFY x", "DONE", [(None, None), ("NOOP", (250, "OK"))]),
    ("vrfy", "VRFY x", "raise", [(None, (451, "Internal error"))]),
    ("vrfy", "VRFY x", "DENYSOFT", [(None, (252, "Just try sending a mail"))]),
    ("vrfy", "VRFY x", "DENY_DISCONNECT", [(None, (252, "Just try sending a mail"))]),
    ("noop", "NOOP", "OK", [(None, (250, "OK"))]),
    ("noop", "NOOP", "DENYSOFT", [(None, (250, "OK"))]),
    ("noop", "NOOP", "DENYSOFT_DISCONNECT", [(None, (250, "OK")), ("NOOP", (250, "OK"))]),
    ("help", "HELP", "DENYSOFT", [(None, (214, "See http://smtpd.develooper.com/"))]),
    ("help", "HELP", "DENY_DISCONNECT", [(None, (214, "See http://smtpd.develooper.com/"))]),
    ("help", "HELP", "raise", [(None, (451, "Internal error"))]),
    ("quit", "QUIT", "DENY", [(None, (221, "closing connection")), (None, CLOSED)]),
    ("quit", "QUIT", "raise", [(None, (221, "closing connection")), (None, CLOSED)]),
    ("noop", "NOOP", "DECLINED", [(None, (250, "OK"))]),
    ("noop", "NOOP", "DENY", [(None, (500, "Stop wasting my time."))]),
    ("noop", "NOOP", "DENY_DISCONNECT", [(None, (500, "Stop wasting my time.")), (None, CLOSED)]),
    ("noop", "NOOP", "DONE", [(None, None), ("RSET", (250, "OK"))]),
    ("noop", "NOOP", "raise", [(None, (451, "Internal error"))]),
    ("help", "HELP", "DECLINED", [(None, (214, "See http://smtpd.develooper.com/"))]),
    ("help", "HELP", "DENY", [(None, (500, "Syntax error, command not recognized"))]),
    ("help", "HELP", "OK some\\nhelp", [(None, (214, "some\nhelp"))]),
    ("help", "HELP", "DONE", [(None, None), ("NOOP", (250, "OK"))]),
    ("quit", "QUIT", "DECLINED",
     [(None, (221, "mx.example.org closing connection. Have a wonderful day.")), (None, CLOSED)]),
    ("quit", "QUIT", "OK bye now", [(None, (221, "bye now")), (None, CLOSED)]),
    ("quit", "QUIT", "DONE", [(None, CLOSED)]),
    ("unrecognized_command", "FOO", "DECLINED", [(None, (500, "Unrecognized command"))]),
    ("unrecognized_command", "FOO", "DENY go away", [(None, (500, "go away"))]),
    ("unrecognized_command", "FOO", "DENY_DISCONNECT bye", [(None, (521, "bye")), (None, CLOSED)]),
    ("unrecognized_command", "FOO", "DENYSOFT", [(None, (500, "Unrecognized command"))]),
    ("unrecognized_command", "FOO", "OK", [(None, (500, "Unrecognized command"))]),
    ("unrecognized_command", "FOO", "DONE", [(None, None), ("NOOP", (250, "OK"))]),
    ("unrecognized_command", "FOO", "raise", [(None, (451, "Internal error"))]),
])
def test_small_verbs(session, hook, command, verdict, steps):
    client = session([f"returns {hook} {verdict}"])
    client.send(command + "\r\n")
    converse(client, steps)


def test_unrecognized_command_arguments(session):
    client = session(["returns unrecognized_command DECLINED"])
    client.cmd("STARTTLS  now please")
    assert client.session.connection.notes["returns_calls"] == [("starttls", "now please")]


def test_help_default_without_version_when_greeting_configured(session):
    client = session([], config={"smtpgreeting": "hi"})
    assert client.cmd("HELP").lines[0] == "This is qpsmtpd "


# -- the no-reply hooks ----------------------------------------------------------------

def test_end_of_session_hooks_in_order(session):
    plugins = ["returns quit DECLINED", "returns disconnect DECLINED",
               "returns reset_transaction DECLINED", "returns post-connection DECLINED"]
    client = session(plugins)
    client.cmd("QUIT")
    client.thread.join(5)
    order = [p for p in client.log if "running plugin" in p]
    hooks = [line.split("(")[1].split(")")[0] for line in order]
    assert hooks[-4:] == ["quit", "disconnect", "reset_transaction", "post-connection"]


def test_client_eof_runs_reset_disconnect_post_connection(session):
    plugins = ["returns disconnect DECLINED", "returns reset_transaction DECLINED",
               "returns post-connection DECLINED"]
    client = session(plugins)
    client.close()
    hooks = [line.split("(")[1].split(")")[0] for line in client.log if "running plugin" in line]
    assert hooks == ["reset_transaction", "disconnect", "post-connection"]
    assert not any("click, disconnecting" in line for line in client.log)


def test_crash_in_disconnect_still_runs_other_plugins(session):
    client = session(["returns disconnect raise", "returns disconnect DECLINED"])
    client.cmd("QUIT")
    client.thread.join(5)
    assert client.session.connection.notes["returns_calls"] == [(), ()]


def test_deny_and_ok_hooks_see_verdicts(session):
    client = session(["returns deny DECLINED", "returns ok DECLINED",
                      "returns mail DENY nope"])
    client.cmd("EHLO c.example")
    client.cmd("MAIL FROM:<a@b.example>")
    calls = client.session.connection.notes["returns_calls"]
    assert ("returns_3a2", 901, "nope") not in calls  # names are per line
    assert any(call[1] == 901 and call[2] == "nope" for call in calls)


def test_received_line_hook(session):
    client = session(["returns received_line OK from somewhere\\n by us", "returns rcpt OK",
                      "returns data_post DECLINED", "returns queue OK"])
    _to_data(client)
    client.cmd("DATA")
    client.send(MESSAGE)
    assert client.reply().code == 250


def test_config_hook_overrides_files(session):
    client = session(["returns config OK hook.example"])
    assert "hook.example ESMTP" in client.greeting.text


def test_plugin_timeout_is_not_the_client_problem(session):
    client = session(["returns helo none"])
    assert client.cmd("HELO x").code == 250


def test_user_config_hook_then_files(session):
    from qpsmtpd.address import Address
    client = session(["returns user_config OK from-hook"], config={"spam_level": "5"})
    client.cmd("NOOP")
    address = Address.parse("<u@example.org>")
    assert client.session.user_config(address, "spam_level") == ["from-hook"]
    plain = session([], config={"spam_level": "5"})
    plain.cmd("NOOP")
    assert plain.session.user_config(address, "spam_level") == ["5"]


PARSER = """
from qpsmtpd.constants import OK
from qpsmtpd.plugin import Plugin

class P(Plugin):
    def hook_helo_parse(self, session):
        return OK, lambda session, verb, rest: (OK, rest.strip("[]"))
"""


def test_helo_parse_hook_supplies_the_host(session, tmp_path, make_app, smtp_session):
    (tmp_path / "myplugins").mkdir()
    (tmp_path / "myplugins" / "helo_strip.py").write_text(PARSER)
    app = make_app(["helo_strip", "returns helo DECLINED"],
                   plugin_dirs=[str(tmp_path / "myplugins"), TEST_PLUGINS, PLUGIN_DIR])
    client = smtp_session(app=app)
    assert client.cmd("HELO [name.example]").code == 250
    assert client.session.connection.hello_host == "name.example"
    assert client.session.connection.notes["returns_calls"] == [("name.example",)]
