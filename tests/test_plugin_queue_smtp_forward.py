"""queue/smtp-forward against real SMTP servers on 127.0.0.1.

Two kinds of downstream server, both real TCP listeners in threads:

* ``Downstream`` is this project's own engine (an ``App`` with its own
  config directory, ``SMTP(...).run()`` per accepted connection) queueing
  with ``queue/maildir``: what lands in its Maildir shows what a real
  qpsmtpd receives, including its own Received header on top;
* ``ScriptedServer`` answers each verb as the test says and records the raw
  bytes on the wire (dot-stuffing, CR LF, XCLIENT), for the cases our
  engine cannot produce (a refusal of one recipient among several, a
  rejection after the dot, XCLIENT, a server that never greets).
"""

import re
import socket
import threading
import time
import tracemalloc

import pytest

from conftest import (DATE, PLUGIN_DIR, RECEIVED, TEST_PLUGINS, maildir_messages, strip_trace,
                      write_config)
from qpsmtpd.app import App
from qpsmtpd.connection import Connection
from qpsmtpd.lineio import LineIO
from qpsmtpd.plugin import PluginError
from qpsmtpd.smtp import SMTP

NAME = "queue::smtp_2dforward"

MESSAGE = (
    "Subject: hello\r\n"
    "Message-Id: <123@example.net>\r\n"
    "\r\n"
    "first line\r\n"
    "..leading dot\r\n"
    "...\r\n"
    "last line\r\n"
    ".\r\n"
)


class Listener:
    """A TCP listener on 127.0.0.1 whose connections ``handle`` serves."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.threads = []
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()

    def _accept(self):
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            thread = threading.Thread(target=self.handle, args=(conn, peer), daemon=True)
            thread.start()
            self.threads.append(thread)

    def close(self):
        self.sock.close()
        for thread in self.threads:
            thread.join(5)


class Downstream(Listener):
    """Our own engine as the next hop, queueing into ``<dir>/Maildir``."""

    def __init__(self, directory, plugins):
        self.directory = directory
        self.maildir = directory / "Maildir"
        self.log = []
        config_dir = directory / "config"
        write_config(str(config_dir), {
            "me": "downstream.example.org", "loglevel": "7", "databytes": "50000000",
            "spool_dir": str(directory / "spool") + "/",
            "plugins": list(plugins)})
        self.app = App([str(config_dir)], log_sink=self.log.append,
                       plugin_dirs=[TEST_PLUGINS, PLUGIN_DIR])
        self.app.load_plugins()
        super().__init__()

    def handle(self, conn, peer):
        io = LineIO(conn)
        local = conn.getsockname()
        connection = Connection(remote_ip=peer[0], remote_port=peer[1],
                                local_ip=local[0], local_port=local[1])
        try:
            SMTP(self.app, io, connection).run()
        finally:
            io.close()


class ScriptedServer(Listener):
    """Answers as ``script`` says: verb -> reply line(s), or a callable
    taking the command line; records every command and the DATA bytes."""

    def __init__(self, script=None, greeting="220 scripted.example ESMTP",
                 extensions=("PIPELINING", "SIZE 10000000", "8BITMIME")):
        self.script = dict(script or {})
        self.greeting = greeting
        self.extensions = list(extensions)
        self.commands = []
        self.data = []
        super().__init__()

    def reply_for(self, verb, line, default):
        answer = self.script.get(verb, default)
        return answer(line) if callable(answer) else answer

    def handle(self, conn, peer):
        reader = conn.makefile("rb")
        try:
            if self.greeting is None:
                reader.readline()  # never greet; wait for the client to give up
                return
            conn.sendall(self.greeting.encode() + b"\r\n")
            while True:
                raw = reader.readline()
                if not raw:
                    return
                line = raw.decode().rstrip("\r\n")
                self.commands.append(line)
                verb = line.split(" ", 1)[0].upper()
                if verb == "EHLO":
                    lines = ["scripted.example"] + self.extensions
                    default = "\r\n".join(f"250-{l}" for l in lines[:-1]) + f"\r\n250 {lines[-1]}"
                elif verb == "DATA":
                    default = "354 go on"
                elif verb == "QUIT":
                    default = "221 bye"
                else:
                    default = "250 ok"
                answer = self.reply_for(verb, line, default)
                if answer is None:
                    return  # hang up
                conn.sendall(answer.encode() + b"\r\n")
                if verb == "DATA" and answer.startswith("354"):
                    body = bytearray()
                    while not body.endswith(b"\r\n.\r\n") and body != b".\r\n":
                        chunk = reader.readline()
                        if not chunk:
                            return
                        body += chunk
                    self.data.append(bytes(body))
                    final = self.reply_for("DOT", line, "250 2.0.0 Ok: queued as 4AB3C2D1")
                    if final is None:
                        return
                    conn.sendall(final.encode() + b"\r\n")
                if verb == "QUIT":
                    return
        except OSError:
            pass
        finally:
            reader.close()
            conn.close()


@pytest.fixture
def servers():
    started = []

    def start(server):
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture
def session(plugin_session):
    """Upstream session whose queue is ``queue/smtp-forward <args>``."""
    def factory(args, **connection):
        return plugin_session(["returns rcpt OK", f"queue/smtp-forward {args}"], **connection)

    return factory


def unable_to_queue(reason):
    """The reply to the dot after EHLO when the plugin declined without a code."""
    return (451, [f"4.3.0 Unable to queue message ({reason})"])


def closed_port():
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def test_relay_into_our_own_engine(session, servers, tmp_path):
    downstream = servers(Downstream(tmp_path / "down", ["returns rcpt OK",
                                                        f"queue/maildir {tmp_path}/down/Maildir"]))
    client = session(f"127.0.0.1 {downstream.port}")
    reply = client.send_message("alice@example.net",
                                ["bob@example.org", "carol@example.org"], MESSAGE)
    assert (reply.code, reply.text) == (250, "2.0.0 queued as <123@example.net>")
    assert client.log_contains(f"{NAME}: forwarding to 127.0.0.1:{downstream.port}")
    assert client.log_contains(f"{NAME}: pass, queued at 127.0.0.1:{downstream.port} "
                               "as <123@example.net>")
    [landed] = maildir_messages(downstream.maildir)
    match = re.fullmatch(
        rb"Return-Path: <alice@example\.net>\n"
        rb"Delivered-To: carol@example\.org\n"
        rb"Delivered-To: bob@example\.org\n"
        rb"Authentication-Results: downstream\.example\.org; auth=none\n"
        rb"Received: from \[127\.0\.0\.1\] \(HELO mx\.example\.org\) \(127\.0\.0\.1\)\n"
        rb" by downstream\.example\.org \(qpsmtpd/[^)]+\) with ESMTP; " + DATE + rb"\n"
        + RECEIVED +  # ours, below it
        rb"Subject: hello\nMessage-Id: <123@example\.net>\n"
        # the downstream engine renames the A-R header it did not write
        rb"Original-Authentication-Results: mx\.example\.org; auth=none\n\n"
        rb"first line\n\.leading dot\n\.\.\nlast line\n", landed)
    assert match and match["proto"] == b"ESMTP", landed
    assert any("dispatching MAIL FROM:<alice@example.net> SIZE=" in line
               for line in downstream.log)


def test_large_message_is_streamed(session, servers, tmp_path):
    """6 MB relayed into the downstream engine's Maildir; Python's peak
    allocation (both engines and the plugin, one process) stays small."""
    downstream = servers(Downstream(tmp_path / "down", ["returns rcpt OK",
                                                        f"queue/maildir {tmp_path}/down/Maildir"]))
    client = session(f"127.0.0.1 {downstream.port}")
    line = b"." + b"w" * 997 + b"\r\n"  # every line needs dot-stuffing on the way
    blocks = 6 * 1024 * 1024 // (len(line) * 64)
    client.start_data("alice@example.net", ["bob@example.org"])
    tracemalloc.start()
    try:
        client.send(b"Subject: big\r\n\r\n")
        stuffed = b"." + line
        for _ in range(blocks):
            client.send(stuffed * 64)
        client.send(b".\r\n")
        reply = client.reply()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reply.code == 250
    [landed] = maildir_messages(downstream.maildir)
    body = landed.split(b"\n\n", 1)[1]
    assert body == (b"." + b"w" * 997 + b"\n") * (blocks * 64)
    print(f"smtp-forward: {len(landed)} byte message, Python peak allocation {peak} bytes")
    assert peak < 3 * 1024 * 1024  # half the message: it was never held whole


def test_null_sender_relayed(session, servers, tmp_path):
    downstream = servers(Downstream(tmp_path / "down", ["returns rcpt OK",
                                                        f"queue/maildir {tmp_path}/down/Maildir"]))
    client = session(f"127.0.0.1 {downstream.port}")
    reply = client.send_message("", ["bob@example.org"], "Subject: bounce\r\n\r\nx\r\n.\r\n")
    assert reply.code == 250 and reply.text == "2.0.0 queued as Queued!"
    [landed] = maildir_messages(downstream.maildir)
    assert landed.startswith(b"Return-Path: <>\nDelivered-To: bob@example.org\n")


def test_bytes_on_the_wire(session, servers):
    server = servers(ScriptedServer())
    client = session(f"127.0.0.1 {server.port}")
    reply = client.send_message("alice@example.net", ["bob@example.org"], MESSAGE)
    assert (reply.code, reply.text) == (250, "2.0.0 queued as 4AB3C2D1")
    assert server.commands[0] == "EHLO mx.example.org"
    assert re.fullmatch(r"MAIL FROM:<alice@example\.net> SIZE=\d+", server.commands[1])
    assert server.commands[2:] == ["RCPT TO:<bob@example.org>", "DATA", "QUIT"]
    [data] = server.data
    # every line ends in CR LF, and none ends otherwise
    assert data.count(b"\r") == data.count(b"\n") == data.count(b"\r\n"), data
    assert strip_trace(data.replace(b"\r\n", b"\n")) == (
        b"Subject: hello\nMessage-Id: <123@example.net>\n\n"
        b"first line\n..leading dot\n...\nlast line\n.\n")
    # SIZE is the message as queued: LF line endings, unstuffed, no dot line
    size = int(server.commands[1].rsplit("=", 1)[1])
    assert size == len(data[:-3].replace(b"\r\n", b"\n").replace(b"\n..", b"\n."))


def test_helo_fallback_and_8bitmime(session, servers):
    server = servers(ScriptedServer({"EHLO": "502 no EHLO here"}))
    client = session(f"127.0.0.1 {server.port}")
    assert client.cmd("EHLO client.example.net").code == 250
    assert client.cmd("MAIL FROM:<alice@example.net> BODY=8BITMIME").code == 250
    assert client.cmd("RCPT TO:<bob@example.org>").code == 250
    assert client.cmd("DATA").code == 354
    client.send("Subject: caf\xe9\r\n\r\n\xe9t\xe9\r\n.\r\n")
    assert client.reply().code == 250
    assert server.commands[:3] == ["EHLO mx.example.org", "HELO mx.example.org",
                                   "MAIL FROM:<alice@example.net>"]
    assert "\xe9t\xe9\r\n".encode() in server.data[0]


def test_body_8bitmime_passed_on_when_offered(session, servers):
    server = servers(ScriptedServer())
    client = session(f"127.0.0.1 {server.port}")
    assert client.cmd("EHLO client.example.net").code == 250
    assert client.cmd("MAIL FROM:<alice@example.net> BODY=8BITMIME").code == 250
    assert client.cmd("RCPT TO:<bob@example.org>").code == 250
    assert client.cmd("DATA").code == 354
    client.send(MESSAGE)
    assert client.reply().code == 250
    assert re.fullmatch(r"MAIL FROM:<alice@example\.net> SIZE=\d+ BODY=8BITMIME",
                        server.commands[1])


def test_downstream_down(session):
    port = closed_port()
    client = session(f"127.0.0.1 {port}")
    reply = client.send_message("alice@example.net", ["bob@example.org"], MESSAGE)
    assert reply == unable_to_queue("Connection refused")
    assert client.log_contains(f"{NAME}: error, 127.0.0.1:{port}: Connection refused")


def test_downstream_never_greets(session, servers):
    server = servers(ScriptedServer(greeting=None))
    client = session(f"127.0.0.1 {server.port} timeout 1")
    started = time.monotonic()
    reply = client.send_message("alice@example.net", ["bob@example.org"], MESSAGE)
    assert time.monotonic() - started < 10
    assert reply == unable_to_queue("Connection unexpectedly closed: timed out")
    assert client.log_contains("timed out")


def test_downstream_greeting_refusal_is_temporary(session, servers):
    server = servers(ScriptedServer(greeting="554 go away"))
    client = session(f"127.0.0.1 {server.port}")
    reply = client.send_message("alice@example.net", ["bob@example.org"], MESSAGE)
    assert reply == unable_to_queue("554 go away")


def test_downstream_refuses_every_recipient(session, servers, tmp_path):
    downstream = servers(Downstream(tmp_path / "down", ["returns rcpt DENY no such user",
                                                        f"queue/maildir {tmp_path}/down/Maildir"]))
    client = session(f"127.0.0.1 {downstream.port}")
    reply = client.send_message("alice@example.net", ["bob@example.org", "carol@example.org"],
                                MESSAGE)
    assert reply.code == 552
    assert reply.text == ("5.7.1 Unable to queue message (<bob@example.org>: 550 "
                          "no such user) (#5.7.1)")
    assert client.log_contains(f"{NAME}: recipient refused: <carol@example.org>: 550 5.7.1 "
                               "no such user")
    assert client.log_contains(f"{NAME}: error, 127.0.0.1:{downstream.port} refused: "
                               "<bob@example.org>: 550 no such user")
    assert maildir_messages(downstream.maildir) == []
    # the downstream session ended cleanly with QUIT, no message data sent
    assert not any(line.endswith("dispatching DATA") for line in downstream.log)
    assert any(line.endswith("dispatching QUIT") for line in downstream.log)


def test_downstream_temporary_recipient_refusal(session, servers, tmp_path):
    downstream = servers(Downstream(tmp_path / "down", ["returns rcpt DENYSOFT try later",
                                                        f"queue/maildir {tmp_path}/down/Maildir"]))
    client = session(f"127.0.0.1 {downstream.port}")
    reply = client.send_message("alice@example.net", ["bob@example.org"], MESSAGE)
    assert (reply.code, reply.text) == (451, "4.7.1 Unable to queue message (<bob@example.org>: "
                                             "450 try later) (#4.7.1)")


def test_downstream_refuses_some_recipients(session, servers):
    server = servers(ScriptedServer({
        "RCPT": lambda line: "550 5.1.1 unknown user" if "carol" in line else "250 ok"}))
    client = session(f"127.0.0.1 {server.port}")
    reply = client.send_message("alice@example.net", ["bob@example.org", "carol@example.org"],
                                MESSAGE)
    # bob was accepted from the client: no bounce for him
    assert (reply.code, reply.text) == (451, "4.1.1 Unable to queue message (<carol@example.org>: "
                                             "550 unknown user) (#5.1.1)")
    assert server.data == []
    assert server.commands[-1] == "QUIT"


@pytest.mark.parametrize("script, code, text", [
    ({"MAIL": "553 5.1.8 sender domain does not exist"}, 552,
     "5.1.8 Unable to queue message (553 sender domain does not exist) (#5.1.8)"),
    ({"MAIL": "451 4.3.0 local problem"}, 451,
     "4.3.0 Unable to queue message (451 local problem) (#4.3.0)"),
    ({"DATA": "554 5.5.1 no valid recipients"}, 552,
     "5.5.1 Unable to queue message (554 no valid recipients) (#5.5.1)"),
    ({"DOT": "554 5.7.1 virus found"}, 552,
     "5.7.1 Unable to queue message (554 virus found) (#5.7.1)"),
    ({"DOT": "452 4.3.1 insufficient storage"}, 451,
     "4.3.1 Unable to queue message (452 insufficient storage) (#4.3.1)"),
])
def test_downstream_refusals_at_each_step(session, servers, script, code, text):
    server = servers(ScriptedServer(script))
    client = session(f"127.0.0.1 {server.port}")
    reply = client.send_message("alice@example.net", ["bob@example.org"], MESSAGE)
    assert (reply.code, reply.text) == (code, text)


def test_downstream_without_queue_answers_451_after_the_dot(session, servers, tmp_path):
    downstream = servers(Downstream(tmp_path / "down", ["returns rcpt OK"]))
    client = session(f"127.0.0.1 {downstream.port}")
    reply = client.send_message("alice@example.net", ["bob@example.org"], MESSAGE)
    assert (reply.code, reply.text) == (451, "4.3.0 Unable to queue message (451 Queuing "
                                             "declined or disabled; try again later) (#4.3.0)")


def test_downstream_hangs_up_during_data(session, servers):
    server = servers(ScriptedServer({"DOT": None}))
    client = session(f"127.0.0.1 {server.port}")
    reply = client.send_message("alice@example.net", ["bob@example.org"], MESSAGE)
    assert reply == unable_to_queue("Connection unexpectedly closed")


def test_quit_failure_after_acceptance_is_still_queued(session, servers):
    server = servers(ScriptedServer({"QUIT": None}))
    client = session(f"127.0.0.1 {server.port}")
    reply = client.send_message("alice@example.net", ["bob@example.org"], MESSAGE)
    assert (reply.code, reply.text) == (250, "2.0.0 queued as 4AB3C2D1")


def test_xclient(session, servers):
    server = servers(ScriptedServer(
        {"XCLIENT": "220 scripted.example ESMTP"},
        extensions=("XCLIENT NAME ADDR PORT HELO PROTO LOGIN", "SIZE 1000000")))
    client = session(f"127.0.0.1 {server.port} xclient")
    reply = client.send_message("alice@example.net", ["bob@example.org"], MESSAGE)
    assert reply.code == 250
    assert server.commands[:3] == [
        "EHLO mx.example.org",
        "XCLIENT NAME=client.example.net ADDR=192.0.2.10 PORT=40000 "
        "HELO=client.example.net PROTO=ESMTP",
        "EHLO mx.example.org"]
    assert server.commands[3].startswith("MAIL FROM:<alice@example.net>")


def test_xclient_only_offered_attributes_and_unknown_name(session, servers):
    server = servers(ScriptedServer({"XCLIENT": "220 ok"},
                                    extensions=("XCLIENT ADDR NAME HELO",)))
    client = session(f"127.0.0.1 {server.port} xclient",
                     remote_ip="2001:db8::7", remote_host="[2001:db8::7]")
    reply = client.send_message("alice@example.net", ["bob@example.org"], MESSAGE,
                                helo="HELO odd+name=x")
    assert reply.code == 250
    assert server.commands[1] == ("XCLIENT NAME=[UNAVAILABLE] ADDR=IPV6:2001:db8::7 "
                                  "HELO=odd+2Bname+3Dx")


def test_xclient_refused_is_temporary(session, servers):
    server = servers(ScriptedServer({"XCLIENT": "550 5.7.0 not authorized"},
                                    extensions=("XCLIENT NAME ADDR",)))
    client = session(f"127.0.0.1 {server.port} xclient")
    reply = client.send_message("alice@example.net", ["bob@example.org"], MESSAGE)
    assert reply == unable_to_queue("XCLIENT refused: 550 5.7.0 not authorized")
    assert server.data == []


def test_xclient_not_configured_or_not_offered(session, servers):
    offered = servers(ScriptedServer(extensions=("XCLIENT NAME ADDR",)))
    client = session(f"127.0.0.1 {offered.port}")
    assert client.send_message("alice@example.net", ["bob@example.org"], MESSAGE).code == 250
    assert not any(c.startswith("XCLIENT") for c in offered.commands)
    plain = servers(ScriptedServer())
    client = session(f"127.0.0.1 {plain.port} xclient")
    assert client.send_message("alice@example.net", ["bob@example.org"], MESSAGE).code == 250
    assert client.log_contains("server does not offer XCLIENT, relaying without")


@pytest.mark.parametrize("args, error", [
    ("", "No SMTP server specified"),
    ("bad/host", "Bad data in smtp server"),
    ("10.2.2.2 99999", "Bad port"),
    ("10.2.2.2 25 timeout soon", "timeout is not a number"),
])
def test_bad_arguments_stop_start_up(make_app, args, error):
    with pytest.raises(PluginError, match=error):
        make_app([f"queue/smtp-forward {args}".rstrip()])
