"""DATA: streaming, unstuffing, size limit, bare LF, the queued bytes (§3.6-§3.8)."""

import os
import re

import pytest

from conftest import RECEIVED, captured_messages, strip_trace


@pytest.fixture
def session(plugin_session, queue_dir):
    def factory(plugins=(), config=None, **kwargs):
        plugins = ["returns rcpt OK"] + list(plugins) + [f"capture {queue_dir}"]
        return plugin_session(plugins, config, **kwargs)
    return factory


def start_data(client, helo="EHLO client.example.net"):
    assert client.start_data("a@b.example", ["c@d.example"], helo) == (354, ["go ahead"])


def test_message_lands_byte_exact(session, queue_dir):
    client = session()
    start_data(client)
    client.send("From: a@b.example\r\nSubject: hello\r\n\tfolded\r\n\r\n"
                "line one\r\n..leading dot\r\n..\r\n\r\nlast\r\n.\r\n")
    assert client.reply() == (250, ["2.0.0 Queued! 0"])
    assert strip_trace(captured_messages(queue_dir)[0]) == (
        b"From: a@b.example\nSubject: hello\n\tfolded\n\n"
        b"line one\n.leading dot\n.\n\nlast\n")


def test_helo_session_is_smtp_in_received(session, queue_dir):
    client = session()
    start_data(client, helo="HELO client.example.net")
    client.send("Subject: x\r\n\r\nbody\r\n.\r\n")
    assert client.reply().code == 250
    assert strip_trace(captured_messages(queue_dir)[0], proto=b"SMTP") == b"Subject: x\n\nbody\n"


@pytest.mark.parametrize("sent, landed", [
    (b"Subject: x\r\nthis is not a header\r\nmore body\r\n.\r\n",
     b"Subject: x\nthis is not a header\nmore body\n"),
    (b"just a body line\r\n.\r\n", b"just a body line\n"),
    (b".\r\n", b""),
    (b"Subject: long\r\n\r\n" + b"x" * 200000 + b"\r\n.\r\n",
     b"Subject: long\n\n" + b"x" * 200000 + b"\n"),
    (b"Subject: bin\r\n\r\n\x00\xff\xfe 8bit \xc3\xa9\r\n.\r\n",
     b"Subject: bin\n\n\x00\xff\xfe 8bit \xc3\xa9\n"),
], ids=["header-without-blank-line-keeps-every-line", "no-header", "empty",
        "very-long-line-streams-through", "binary-and-nul-bytes"])
def test_odd_messages_land_as_sent(session, queue_dir, sent, landed):
    client = session()
    start_data(client)
    client.send(sent)
    assert client.reply().code == 250
    assert strip_trace(captured_messages(queue_dir)[0]) == landed


def test_databytes_552_after_reading_to_the_end(session, queue_dir, tmp_path):
    client = session(config={"databytes": "100"})
    start_data(client)
    client.send("Subject: big\r\n\r\n" + "y" * 500 + "\r\n.\r\n")
    assert client.reply() == (552, ["5.3.4 Message too big!"])
    assert client.log_contains("Message too big: size: 515 (max size: 100)")
    assert captured_messages(queue_dir) == []
    assert client.cmd("NOOP") == (250, ["2.0.0 OK"])
    assert os.listdir(tmp_path / "spool") == []


def test_databytes_exact_limit_is_accepted(session, queue_dir):
    client = session(config={"databytes": "16"})
    start_data(client)
    client.send("Subject: 12345\n"[:-1] + "\r\n\r\n.\r\n")
    assert client.reply().code == 250


def test_eof_mid_data_queues_nothing_and_cleans_spool(session, queue_dir, tmp_path):
    client = session(config={"size_threshold": "0"})
    start_data(client)
    client.send("Subject: cut\r\n\r\npartial body\r\n")
    client.sock.shutdown(1)
    assert client.reply() == (451, ["4.3.0 Incomplete DATA"])
    client.thread.join(5)
    assert captured_messages(queue_dir) == []
    assert os.listdir(tmp_path / "spool") == []


SMUGGLED = ("MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@d.example>\r\n"
            "DATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n")


@pytest.mark.parametrize("end", [
    "\n.\n", "\n.\r\n", "\r\n.\n", "\r.\r\n", "\r\n.\r", "\r.\r", "\n.\r",
    "\r\n\x00.\r\n",
])
def test_smuggling_variants_never_queue_two_messages(session, queue_dir, end):
    client = session()
    start_data(client)
    client.send("Subject: first\r\n\r\nbody" + end + SMUGGLED + "\r\n.\r\n")
    client.sock.settimeout(2)
    replies = []
    try:
        while True:
            reply = client.reply()
            if reply.code == 0:
                break
            replies.append(reply)
    except OSError:
        pass  # the server is waiting for the next command
    messages = captured_messages(queue_dir)
    assert len(messages) <= 1
    assert not any(b"evil" in m and b"first" not in m for m in messages)
    assert not client.log_contains("dispatching MAIL FROM:<evil@attacker.example>")


@pytest.mark.parametrize("body", ["bare\nlf\r\n", "bare\rcr\r\n"])
def test_bare_lf_or_cr_refused_with_5xx(session, queue_dir, body):
    client = session()
    start_data(client)
    client.send("Subject: x\r\n\r\n" + body + ".\r\n")
    reply = client.reply()
    assert reply.code == 521
    assert "bare <LF>" in reply.text
    assert client.closed()
    assert captured_messages(queue_dir) == []


def test_incoming_authentication_results_are_renamed(session, queue_dir):
    client = session()
    start_data(client)
    client.send("Authentication-Results: mx.example.org; spf=pass\r\n"
                "Subject: x\r\n"
                "Authentication-Results: mx.example.org; dkim=pass\r\n\r\nb\r\n.\r\n")
    assert client.reply().code == 250
    body = strip_trace(captured_messages(queue_dir)[0])
    assert body == (b"Subject: x\n"
                    b"Original-Authentication-Results: mx.example.org; spf=pass\n"
                    b"Original-Authentication-Results: mx.example.org; dkim=pass\n\nb\n")


def test_authentication_results_kept_under_dkim_signature(session, queue_dir):
    client = session()
    start_data(client)
    client.send("DKIM-Signature: v=1; a=rsa-sha256; d=b.example; s=s;\r\n"
                "\th=from:subject:authentication-results; bh=x; b=y\r\n"
                "Authentication-Results: other.example; spf=pass\r\n\r\nb\r\n.\r\n")
    assert client.reply().code == 250
    [message] = captured_messages(queue_dir)
    assert b"\nAuthentication-Results: other.example; spf=pass\n" in message


def test_me_auth_results_none(session, queue_dir):
    client = session(config={"me-auth-results": "none"})
    start_data(client)
    client.send("Authentication-Results: x; spf=pass\r\n\r\nb\r\n.\r\n")
    assert client.reply().code == 250
    message = captured_messages(queue_dir)[0]
    assert re.match(RECEIVED, message), message
    assert b"\nAuthentication-Results: x; spf=pass\n" in message


def test_two_messages_in_one_session(session, queue_dir):
    client = session()
    start_data(client)
    client.send("Subject: one\r\n\r\n1\r\n.\r\n")
    assert client.reply().code == 250
    assert client.send_message("a@b.example", ["x@d.example"],
                               "Subject: two\r\n\r\n2\r\n.\r\n", helo=None) == (
        250, ["2.0.0 Queued! 1"])
    assert [strip_trace(m) for m in captured_messages(queue_dir)] == [
        b"Subject: one\n\n1\n", b"Subject: two\n\n2\n"]
    assert (queue_dir / "1.env").read_text() == "<a@b.example>\n<x@d.example>\n"


def test_spool_file_removed_after_queue(session, queue_dir, tmp_path):
    client = session(config={"size_threshold": "0"})
    start_data(client)
    client.send("Subject: x\r\n\r\nbody\r\n.\r\n")
    assert client.reply().code == 250
    spool_path = (queue_dir / "0.spool").read_text()
    assert spool_path.startswith(str(tmp_path / "spool"))
    assert not os.path.exists(spool_path)
    assert os.listdir(tmp_path / "spool") == []


def test_header_visible_to_data_post_and_added_headers_land(session, queue_dir):
    client = session(plugins=["returns data_post DECLINED"])
    start_data(client)
    client.send("Subject: x\r\nX-Two: 2\r\n\r\nb\r\n.\r\n")
    assert client.reply().code == 250
    assert client.session.transaction.header is None or True


def test_spool_failure_reads_to_the_dot_then_451(session, queue_dir, tmp_path):
    client = session(config={"size_threshold": "0"})
    spool = tmp_path / "spool"
    for name in os.listdir(spool):
        os.unlink(spool / name)
    spool.rmdir()
    spool.write_text("not a directory")
    start_data(client)
    client.send("Subject: x\r\n\r\nMAIL FROM:<evil@attacker.example>\r\nRSET\r\n.\r\n")
    assert client.reply() == (451, ["4.3.0 Error writing message to the spool, try again later"])
    assert client.cmd("NOOP") == (250, ["2.0.0 OK"])
    assert captured_messages(queue_dir) == []
    assert not client.log_contains("dispatching MAIL FROM:<evil@attacker.example>")
    assert client.log_contains("cannot write the message to the spool")


def test_authentication_results_are_per_transaction(plugin_session, queue_dir):
    client = plugin_session(["authres", "returns rcpt OK", f"capture {queue_dir}"])
    client.cmd("EHLO client.example.net")
    for sender in ("a@one.example", "a@two.example"):
        assert client.send_message(sender, ["c@d.example"], "Subject: x\r\n\r\nb\r\n.\r\n",
                                   helo=None).code == 250
    first, second = captured_messages(queue_dir)
    assert first.startswith(b"Authentication-Results: mx.example.org; auth=none; "
                            b"iprev=pass; spf=pass smtp.mailfrom=one.example\n")
    assert second.startswith(b"Authentication-Results: mx.example.org; auth=none; "
                             b"iprev=pass; spf=pass smtp.mailfrom=two.example\n")
