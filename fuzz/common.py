"""What the harnesses share: import paths, the sites they serve, and one
SMTP session run on a socketpair.

A harness instruments the engine first (``atheris.instrument_imports``),
then imports this module. ``serve(app, stream)`` runs ``SMTP.run()`` in
the calling thread, so an exception that escapes it reaches the fuzzer as
a crash with its traceback; a helper thread collects every byte the
server writes (and a second one sends ``stream`` when it is too long to
sit in the socket buffer), so neither side can block the other.

``replies(raw)`` splits the server's output into ``(code, text)`` pairs and
raises ``AssertionError`` for anything that is not a well-formed reply.
"""

import atexit
import os
import re
import shutil
import socket
import tempfile
import threading

import paths  # noqa: F401
from hardening_fixtures import build_app, tracebacks
from qpsmtpd import smtp
from qpsmtpd.connection import Connection
from qpsmtpd.lineio import LineIO

_REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])([ -])([^\r\n]*)\r\n")
CLOSING_CODES = frozenset((221, 421, 521))

_scratch = tempfile.mkdtemp(prefix="qpsmtpd-fuzz-")
atexit.register(shutil.rmtree, _scratch, True)


def site(name, plugins, files=None):
    """An App in a scratch directory; ``app.queue_dir`` is where the
    ``capture`` plugin, if listed as ``capture {queue}``, writes."""
    root = os.path.join(_scratch, name)
    queue = os.path.join(root, "queue")
    plugins = [line.format(queue=queue) for line in plugins]
    # Level 3 (LOGERROR) still logs every traceback, and is cheaper.
    app = build_app(os.path.join(root, "config"), plugins,
                    {"loglevel": "3", **(files or {})})
    app.queue_dir = queue
    return app


def clear_queue(app):
    """Forget what ``capture`` queued (it numbers messages by counting)."""
    if not os.path.isdir(app.queue_dir):
        os.makedirs(app.queue_dir)
    elif os.listdir(app.queue_dir):
        shutil.rmtree(app.queue_dir)
        os.makedirs(app.queue_dir)


def serve(app, stream, recv_size=None, command_limit=None, piece_limit=None):
    """Run one session fed ``stream``; return everything the server wrote.

    ``recv_size`` makes the server read at most that many bytes per
    ``recv`` (so the stream reaches it cut into pieces); ``command_limit``
    and ``piece_limit`` shrink the engine's line limits for this session,
    so that the paths for over-long lines are reachable with short inputs.
    """
    del app.captured_log[:]
    server_sock, client_sock = socket.socketpair()
    received = bytearray()

    def send():
        try:
            client_sock.sendall(stream)
        except OSError:
            pass  # the server closed first (QUIT, 521)
        try:
            client_sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def receive():
        while True:
            try:
                chunk = client_sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            received.extend(chunk)

    helpers = [threading.Thread(target=receive, daemon=True)]
    if len(stream) < 65536:
        send()  # fits in the socket buffer: cannot block, saves a thread
    else:
        helpers.append(threading.Thread(target=send, daemon=True))
    for helper in helpers:
        helper.start()
    saved = smtp.COMMAND_LINE_LIMIT, smtp.DATA_PIECE_LIMIT
    if command_limit:
        smtp.COMMAND_LINE_LIMIT = command_limit
    if piece_limit:
        smtp.DATA_PIECE_LIMIT = piece_limit
    io = LineIO(server_sock)
    if recv_size:
        io.recv_size = recv_size
    connection = Connection(remote_ip="192.0.2.10", remote_port=40000,
                            remote_host="client.example.net", local_ip="192.0.2.1",
                            local_port=25)
    try:
        smtp.SMTP(app, io, connection).run()
    finally:
        smtp.COMMAND_LINE_LIMIT, smtp.DATA_PIECE_LIMIT = saved
        io.close()
        for helper in helpers:
            helper.join(30)
        client_sock.close()
    if any(helper.is_alive() for helper in helpers):
        raise AssertionError("the client side did not finish")
    return bytes(received)


def replies(raw):
    """``[(code, [text, ...]), ...]`` from the server's output; raises
    AssertionError on anything that is not a well-formed reply."""
    result = []
    lines = []
    pos = 0
    while pos < len(raw):
        match = _REPLY_LINE.match(raw, pos)
        if match is None:
            raise AssertionError(f"not a reply line at {pos}: {raw[pos:pos + 80]!r}")
        if lines and match[1] != lines[0][0]:
            raise AssertionError(f"code changed inside a reply: {match[0]!r}")
        lines.append((match[1], match[3]))
        pos = match.end()
        if match[2] == b" ":
            result.append((int(lines[0][0]), [text for _, text in lines]))
            lines = []
    if lines:
        raise AssertionError(f"output ends inside a reply: {lines!r}")
    return result


def check_log(app):
    """No traceback in the session's log."""
    found = tracebacks(app.captured_log)
    if found:
        raise AssertionError("traceback in the log:\n" + "\n".join(app.captured_log[-40:]))


def check_close(answers):
    """A reply that closes the connection is the last one."""
    for index, (code, _) in enumerate(answers[:-1]):
        if code in CLOSING_CODES:
            raise AssertionError(f"replies after {code}: {answers[index + 1:]!r}")
