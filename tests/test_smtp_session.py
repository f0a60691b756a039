"""The SMTP conversation: commands, arguments, sequence, limits (§3)."""

import pytest


@pytest.fixture
def session(plugin_session, tmp_path):
    def factory(plugins=("returns rcpt OK",), config=None, **kwargs):
        return plugin_session(list(plugins) + [f"capture {tmp_path / 'queue'}"], config, **kwargs)
    return factory


@pytest.mark.parametrize("argument, code, text", [
    ("FROM:<a@example.com> SIZE=123 BODY=8BITMIME", 250, "<a@example.com>, sender OK"),
    ("FROM: <a@example.com>", 250, "<a@example.com>, sender OK"),
    ("from:<a@example.com>", 250, "<a@example.com>, sender OK"),
    ("FROM :<a@example.com>", 501, "Syntax error in command"),
    ("FROM:<a@b c>", 501, "Syntax error in parameters"),
    ("FROM:", 250, "<>, sender OK"),
    ("FROM:<>", 250, "<>, sender OK"),
    ("FROM:<#@[]>", 250, "<>, sender OK"),
    ("FROM:a@example.com", 501, "could not parse your mail from command"),
    ("FROM:<ask @perl.org>", 250, '<"ask\\ "@perl.org>, sender OK'),
    ("FROM:<ask@perl.org> SIZE=1230 BODY=7BIT", 250, "<ask@perl.org>, sender OK"),
    ("FROM:<user@example.com.>", 501, "could not parse your mail from command"),
    ("FROM:<@a,@b:user@example.com>", 250, "<user@example.com>, sender OK"),
    ("FROM:<ask@[IPv6:::1]>", 250, "<ask@[IPv6:::1]>, sender OK"),
    ("FROM:<ask@[1.2.3.4]>", 250, "<ask@[1.2.3.4]>, sender OK"),
    ("TO:<a@example.com>", 501, "Syntax error in command"),
    # RFC 1869/1870/6152 (the original passed these to plugins unchecked)
    ("FROM:<a@example.com> CORRECT-WITHOUT-ARG", 555, "Unsupported parameter: CORRECT-WITHOUT-ARG"),
    ("FROM:<a@example.com> SIZE=abc", 501, "Syntax error in SIZE parameter"),
    ("FROM:<a@example.com> BODY=BINARYMIME", 501, "Syntax error in BODY parameter"),
    ("FROM:<a@example.com> SIZE=1000001", 552,
     "Message size exceeds fixed maximum message size"),
])
def test_mail_arguments(session, argument, code, text):
    client = session(config={"databytes": "1000000"})
    client.cmd("EHLO c.example")
    reply = client.cmd(f"MAIL {argument}")
    assert reply.code == code, reply
    assert text in reply.text


@pytest.mark.parametrize("argument, code, text", [
    ("TO:<c@d.example>", 250, "<c@d.example>, recipient ok"),
    ("TO:<postmaster>", 250, "<postmaster>, recipient ok"),
    ("TO:<POSTMASTER>", 250, "<postmaster>, recipient ok"),
    ("TO:<abuse>", 501, "could not parse recipient"),
    ("TO:<>", 501, "could not parse recipient"),
    ("TO:", 501, "Syntax error in address"),
    ("TO:c@d.example", 501, "could not parse recipient"),
    ("TO:<@example.com>", 501, "could not parse recipient"),
    ("TO :<c@d.example>", 501, "Syntax error in command"),
    ("TO:<c@d.example> NOTIFY=NEVER", 555, "Unsupported parameter: NOTIFY"),
    ('TO:<"a b"@example.com>', 501, "could not parse recipient"),
])
def test_rcpt_arguments(session, argument, code, text):
    client = session()
    client.cmd("EHLO c.example")
    client.cmd("MAIL FROM:<a@b.example>")
    reply = client.cmd(f"RCPT {argument}")
    assert reply.code == code, reply
    assert text in reply.text


def test_sequence_errors(session):
    client = session()
    assert client.cmd("MAIL FROM:<a@b.example>") == (503, ["please say hello first ..."])
    assert client.cmd("RCPT TO:<c@d.example>") == (503, ["Use MAIL before RCPT"])
    client.cmd("EHLO c.example")
    assert client.cmd("RCPT TO:<c@d.example>") == (503, ["5.5.1 Use MAIL before RCPT"])
    assert client.cmd("MAIL FROM:<a@b.example>").code == 250
    # RFC 5321 3.3: no MAIL inside a transaction (the original started a new one)
    assert client.cmd("MAIL FROM:<x@b.example>") == (503, ["5.5.1 Error: nested MAIL command"])
    assert client.cmd("RSET") == (250, ["2.0.0 OK"])
    assert client.cmd("MAIL FROM:<x@b.example>").code == 250


def test_rset_clears_the_sender(session):
    client = session()
    client.cmd("EHLO c.example")
    client.cmd("MAIL FROM:<a@b.example>")
    client.cmd("RSET")
    assert client.cmd("RCPT TO:<c@d.example>") == (503, ["5.5.1 Use MAIL before RCPT"])


def test_helo_session_has_no_enhanced_codes(session):
    client = session()
    client.cmd("HELO c.example")
    assert client.cmd("MAIL FROM:<a@b.example>") == (
        250, ["<a@b.example>, sender OK - how exciting to get mail from you!"])


def test_enhanced_status_codes_can_be_turned_off(session):
    client = session(config={"enhancedstatuscodes": "0"})
    assert "ENHANCEDSTATUSCODES" not in client.cmd("EHLO c.example").lines
    assert client.cmd("NOOP") == (250, ["OK"])


@pytest.mark.parametrize("line, code, text", [
    ("NONSENSE", 500, "Unrecognized command"),
    (" HELO x", 500, "Unrecognized command"),
    ("", 500, "Unrecognized command"),
    ("STARTTLS", 500, "Unrecognized command"),
    ("EXPN staff", 502, "Command not implemented"),
    ("ETRN example.org", 502, "Command not implemented"),
    ("BDAT 10 LAST", 502, "Command not implemented"),
    ("AUTH PLAIN AGZvbwBiYXI=", 500, "Unrecognized command"),
    ("ABCDEFGHIJKLMN", 500, "Unrecognized command"),
    ("VRFY <foo@bar>", 252, "Just try sending a mail and we'll see how it turns out ..."),
    ("noop", 250, "OK"),
    ("HELP", 214, "This is qpsmtpd 0.1.0"),
    ("MAIL\0 FROM:<a@b>", 500, "NUL character in command"),
])
def test_command_replies(session, line, code, text):
    client = session()
    reply = client.cmd(line)
    assert reply.code == code and text in reply.text, reply


def test_line_too_long_is_refused_and_session_goes_on(session):
    client = session()
    reply = client.cmd("NOOP " + "x" * 10000)
    assert reply == (500, ["Line too long"])
    assert client.cmd("NOOP") == (250, ["OK"])


def test_pipelining_replies_in_order(session):
    client = session()
    client.cmd("EHLO c.example")
    client.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"
                "RCPT TO:<>\r\nRCPT TO:<e@f.example>\r\nDATA\r\n")
    codes = [client.reply().code for _ in range(5)]
    assert codes == [250, 250, 501, 250, 354]
    client.send("Subject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n")
    assert client.reply().code == 250
    assert client.reply().code == 221


def test_bare_lf_commands_are_accepted(session):
    client = session()
    client.send("NOOP\n")
    assert client.reply() == (250, ["OK"])


def test_idle_timeout_says_421_with_crlf_and_closes(session):
    client = session(config={"timeoutsmtpd": "1"})
    assert client.file.readline() == b"421 Connection Timed Out\r\n"
    assert client.closed()
    assert client.log_contains("Connection Timed Out")


def test_data_timeout(session):
    client = session(config={"timeout": "1", "timeoutsmtpd": "30"})
    client.cmd("EHLO c.example")
    client.cmd("MAIL FROM:<a@b.example>")
    client.cmd("RCPT TO:<c@d.example>")
    assert client.cmd("DATA").code == 354
    client.send("Subject: slow\r\n")
    assert client.reply() == (421, ["4.4.2 Connection Timed Out"])
    assert client.closed()


def test_quit_closes(session):
    client = session()
    assert client.cmd("QUIT") == (221, ["mx.example.org closing connection. Have a wonderful day."])
    assert client.closed()
    assert client.log_contains("click, disconnecting")


def test_recipient_limit(session):
    client = session(config={"max_recipients": "2"})
    client.cmd("EHLO c.example")
    client.cmd("MAIL FROM:<a@b.example>")
    assert client.cmd("RCPT TO:<c1@d.example>").code == 250
    assert client.cmd("RCPT TO:<c2@d.example>").code == 250
    assert client.cmd("RCPT TO:<c3@d.example>") == (452, ["4.5.3 Too many recipients"])


def test_connection_log_line(session):
    client = session()
    assert client.log_contains("Connection from client.example.net [192.0.2.10]")
    client.cmd("NOOP")
    assert client.log_contains("dispatching NOOP")
    assert client.log_contains("250 OK")


def test_8bit_commands_survive(session):
    client = session()
    client.cmd("EHLO c.example")
    reply = client.cmd("MAIL FROM:<postmáster@example.com>")
    assert reply.code == 250
    assert "postm" in reply.text
