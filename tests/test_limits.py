"""The session's limits (qpsmtpd/smtp.py's table): each set from its
config file, each answered with a clear reply, none losing a message the
server acknowledged. Sessions run over a real socketpair against the real
engine; the per-IP limit of the daemon is in test_forkserver.py."""

import select
import time

import pytest

from conftest import captured_messages, spool_files

MESSAGE = "Subject: limits\r\n\r\nbody\r\n.\r\n"


def open_transaction(client, helo="EHLO client.example.net"):
    if helo:
        assert client.cmd(helo).code == 250
    assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
    assert client.cmd("RCPT TO:<b@rcpt.example>").code == 250


# -- command line length ----------------------------------------------------------

def test_max_line_length_from_config(mta):
    client = mta(max_line_length=600)
    assert client.cmd("NOOP " + "x" * 590).code == 250
    assert client.cmd("NOOP " + "x" * 700) == (500, ["Line too long"])
    assert client.cmd("NOOP") == (250, ["OK"])


def test_max_line_length_never_below_the_rfc_minimum(mta):
    """512 (RFC 5321 4.5.3.1.4) is the floor: a smaller value is raised."""
    client = mta(max_line_length=10)
    assert client.cmd("NOOP " + "x" * 500).code == 250
    assert client.cmd("NOOP " + "x" * 600) == (500, ["Line too long"])


def test_max_line_length_not_a_number_keeps_the_default(mta):
    client = mta(max_line_length="lots")
    assert client.cmd("NOOP " + "x" * 4000).code == 250
    assert client.cmd("NOOP " + "x" * 5000) == (500, ["Line too long"])
    assert client.log_contains("max_line_length: ignoring invalid number 'lots'")


# -- DATA line length ---------------------------------------------------------------

def test_data_lines_are_unlimited_by_default(mta, queue_dir):
    client = mta()
    open_transaction(client)
    assert client.cmd("DATA").code == 354
    long_line = "y" * 300_000
    client.send(f"Subject: long\r\n\r\n{long_line}\r\n.\r\n")
    assert client.reply().code == 250
    assert captured_messages(queue_dir)[0].endswith(long_line.encode() + b"\n")


def test_max_data_line_length_refuses_after_the_dot(mta, queue_dir):
    client = mta(max_data_line_length=998)
    open_transaction(client)
    assert client.cmd("DATA").code == 354
    # the RFC's limit itself passes; one more character does not
    client.send("Subject: ok\r\n\r\n" + "a" * 998 + "\r\n" + ".\r\n")
    assert client.reply().code == 250
    assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
    assert client.cmd("RCPT TO:<b@rcpt.example>").code == 250
    assert client.cmd("DATA").code == 354
    client.send("Subject: long\r\n\r\n" + "b" * 999 + "\r\nRSET\r\n.\r\n")
    assert client.reply() == (554, ["5.6.0 Message has a line longer than 998 characters"])
    assert client.cmd("NOOP") == (250, ["2.0.0 OK"])
    assert len(captured_messages(queue_dir)) == 1
    assert spool_files(client) == []
    assert client.log_contains("a line longer than 998 characters (max_data_line_length)")


def test_max_data_line_length_counts_lines_longer_than_a_read(mta, queue_dir):
    """A line longer than the 64 KiB pieces DATA is read in is one line."""
    client = mta(max_data_line_length=100_000)
    open_transaction(client)
    assert client.cmd("DATA").code == 354
    client.send("Subject: long\r\n\r\n" + "c" * 100_001 + "\r\n.\r\n")
    assert client.reply().code == 554
    assert captured_messages(queue_dir) == []


# -- recipients, transactions ---------------------------------------------------------

def test_max_recipients_from_config(mta):
    client = mta(max_recipients=3)
    client.cmd("EHLO client.example.net")
    client.cmd("MAIL FROM:<a@sender.example>")
    for number in range(3):
        assert client.cmd(f"RCPT TO:<r{number}@rcpt.example>").code == 250
    assert client.cmd("RCPT TO:<r4@rcpt.example>") == (452, ["4.5.3 Too many recipients"])
    assert client.cmd("DATA").code == 354


def test_max_transactions_closes_with_421_at_the_next_mail(mta, queue_dir):
    client = mta(max_transactions=3)
    open_transaction(client)
    assert client.cmd("DATA").code == 354
    client.send(MESSAGE)
    assert client.reply().code == 250
    # a transaction given up with RSET counts too: it took a MAIL
    assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
    assert client.cmd("RSET").code == 250
    # a refused MAIL does not count
    assert client.cmd("MAIL FROM:<not an address>").code == 501
    open_transaction(client, helo=None)
    assert client.cmd("DATA").code == 354
    client.send(MESSAGE)
    assert client.reply().code == 250
    reply = client.cmd("MAIL FROM:<a@sender.example>")
    assert reply == (421, ["4.7.0 Too many messages in this connection, please reconnect"])
    assert client.closed()
    assert len(captured_messages(queue_dir)) == 2
    assert client.log_contains("max_transactions 3 reached")


def test_max_transactions_default_allows_many(mta, queue_dir):
    client = mta()
    client.cmd("EHLO client.example.net")
    for _ in range(30):
        open_transaction(client, helo=None)
        assert client.cmd("DATA").code == 354
        client.send(MESSAGE)
        assert client.reply().code == 250
    assert len(captured_messages(queue_dir)) == 30


# -- errors ----------------------------------------------------------------------------

def test_max_errors_closes_with_421(mta):
    client = mta(max_errors=3)
    assert client.cmd("FOO").code == 500
    assert client.cmd("MAIL FROM:<a@b.example>").code == 503     # sequence error
    assert client.cmd("NOOP").code == 250                         # not an error
    assert client.cmd("HELO").code == 501                         # syntax error
    assert client.reply() == (421, ["Too many errors, closing connection"])
    assert client.closed()
    assert client.log_contains("too many errors (3, max_errors 3)")


def test_max_errors_default_is_20(mta):
    client = mta()
    client.cmd("EHLO client.example.net")
    for _ in range(19):
        assert client.cmd("BAR").code == 500
    assert client.cmd("NOOP").code == 250
    client.send("BAR\r\n")
    assert client.reply().code == 500
    assert client.reply() == (421, ["4.7.0 Too many errors, closing connection"])
    assert client.closed()


def test_max_errors_zero_turns_it_off(mta):
    client = mta(max_errors=0)
    for _ in range(40):
        assert client.cmd("BAR").code == 500
    assert client.cmd("NOOP").code == 250


def test_long_lines_count_as_errors(mta):
    client = mta(max_errors=2)
    assert client.cmd("NOOP " + "x" * 5000).code == 500
    client.send("NOOP " + "x" * 5000 + "\r\n")
    assert client.reply().code == 500
    assert client.reply().code == 421


# -- HELO and paths ------------------------------------------------------------------------

def test_helo_argument_at_most_255(mta):
    client = mta()
    name = ("a" * 63 + ".") * 4
    assert client.cmd("EHLO " + name[:255]).code == 250
    reply = client.cmd("EHLO " + name[:255] + "x")
    assert reply == (501, ["5.5.2 ehlo argument too long (at most 255 characters)"])
    assert client.cmd("HELO " + "h" * 300) == \
        (501, ["5.5.2 helo argument too long (at most 255 characters)"])


def test_paths_at_most_256_with_brackets(mta, queue_dir):
    client = mta()
    client.cmd("EHLO client.example.net")
    local = "l" * 64
    fits = f"{local}@" + "d" * (254 - 65 - 4) + ".net"      # 254 + <> = 256
    assert len(f"<{fits}>") == 256
    too_long = "x" + fits
    assert client.cmd(f"MAIL FROM:<{too_long}>") == \
        (501, ["5.1.7 Path too long (at most 256 characters)"])
    assert client.cmd(f"MAIL FROM:<{fits}>").code == 250
    assert client.cmd(f"RCPT TO:<{too_long}>") == \
        (501, ["5.1.3 Path too long (at most 256 characters)"])
    assert client.cmd(f"RCPT TO:<{fits}>").code == 250


def test_path_length_is_configurable(mta):
    client = mta(max_path_length=20)
    client.cmd("EHLO client.example.net")
    assert client.cmd("MAIL FROM:<abcdefghijkl@b.example>").code == 501
    assert client.cmd("MAIL FROM:<a@b.example>").code == 250


# -- message size ----------------------------------------------------------------------------

def test_size_parameter_refused_early(mta):
    client = mta(databytes=1000)
    assert "SIZE 1000" in client.cmd("EHLO client.example.net").lines
    assert client.cmd("MAIL FROM:<a@sender.example> SIZE=1001") == \
        (552, ["5.3.4 Message size exceeds fixed maximum message size"])
    assert client.cmd("MAIL FROM:<a@sender.example> SIZE=1000").code == 250


def test_oversize_message_streamed_then_552(mta, queue_dir):
    """Past databytes the rest is read and dropped (the spool file is gone
    at once), then 552; the session goes on."""
    client = mta(databytes=100_000)
    open_transaction(client)
    assert client.cmd("DATA").code == 354
    client.send("Subject: big\r\n\r\n")
    for _ in range(200):
        client.send("z" * 998 + "\r\n")
    client.send(".\r\n")
    assert client.reply() == (552, ["5.3.4 Message too big!"])
    assert spool_files(client) == []
    assert captured_messages(queue_dir) == []
    assert client.cmd("NOOP").code == 250


# -- time ----------------------------------------------------------------------------------------

def test_idle_timeout(mta):
    client = mta(timeoutsmtpd=1)
    started = time.monotonic()
    assert client.reply() == (421, ["Connection Timed Out"])
    assert 0.8 < time.monotonic() - started < 5
    assert client.closed()


def test_max_session_time_ends_an_idle_session(mta):
    client = mta(max_session_time=1, timeoutsmtpd=30)
    client.cmd("EHLO client.example.net")
    started = time.monotonic()
    assert client.reply() == (421, ["4.4.2 Session time limit exceeded, closing connection"])
    assert time.monotonic() - started < 5
    assert client.closed()
    assert client.log_contains("session time limit of 1 s reached")


def test_max_session_time_ends_a_busy_session(mta):
    """A client that keeps talking, each command well within the idle
    timeout, is still cut off."""
    client = mta(max_session_time=1)
    started = time.monotonic()
    while time.monotonic() - started < 5:
        reply = client.cmd("NOOP")
        if reply.code != 250:
            break
        time.sleep(0.1)
    assert reply == (421, ["Session time limit exceeded, closing connection"])
    assert client.closed()


def test_max_session_time_during_data_queues_nothing(mta, queue_dir):
    """A client dripping a message, each line well within the DATA timeout,
    gets 421 mid-DATA; nothing is queued and the spool file is removed."""
    client = mta(max_session_time=2)
    open_transaction(client)
    assert client.cmd("DATA").code == 354
    client.send("Subject: drip\r\n\r\n")
    started = time.monotonic()
    while time.monotonic() - started < 6:
        if select.select([client.sock], [], [], 0.1)[0]:
            break
        try:
            client.send("drip " + "d" * 1000 + "\r\n")
        except OSError:
            break
    assert client.reply() == (421, ["4.4.2 Session time limit exceeded, closing connection"])
    assert 1.5 < time.monotonic() - started < 5
    assert captured_messages(queue_dir) == []
    client.thread.join(5)
    assert spool_files(client) == []


# -- bad values ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, default", [
    ("max_errors", 20), ("max_transactions", 100), ("max_session_time", 3600),
    ("max_data_line_length", 0), ("hook_timeout", 300), ("max_path_length", 256)])
def test_negative_values_keep_the_default(mta, name, default):
    client = mta(**{name: -5})
    assert client.cmd("NOOP").code == 250
    assert getattr(client.session, name) == default
    assert client.log_contains(f"config: {name}: ignoring negative value -5, using {default}")
