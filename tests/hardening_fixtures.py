"""Helpers for the hardening tests (relay safety, property tests, fuzzing).

Shared by ``tests/test_relay_safety.py``, ``tests/test_fuzz_properties.py``
and the coverage-guided harnesses in ``fuzz/``, which is why nothing here
is a pytest fixture: a property test runs hundreds of sessions inside one
test function, and a fuzzer has no pytest at all.

* ``build_app(config_dir, plugins, files)`` — an ``App`` with its own
  config directory, built once and reused for many sessions (as the
  forkserver does).
* ``Session(app, ...)`` — ``SMTP.run()`` in a thread on one end of a
  ``socket.socketpair()``; the test holds the other end. Unlike the
  ``smtp_session`` fixture it records an exception that escapes
  ``run()`` (``session.error``) instead of leaving it to the threading
  hook, and its reply reader is strict: every reply line must be
  ``<code><space or dash><text><CR><LF>`` with no other CR or LF.
* ``data_verdict(stream, max_size)`` — a small, independent model of what
  the DATA reader must do with the bytes that follow ``354``.
* ``strip_received(message)`` — the queued bytes without the
  Authentication-Results and Received fields the server prepends.
"""

import os
import re
import socket
import threading
import time
import traceback
from typing import NamedTuple

from conftest import PLUGIN_DIR, TEST_PLUGINS, write_config
from qpsmtpd.app import App
from qpsmtpd.connection import Connection
from qpsmtpd.lineio import LineIO
from qpsmtpd.smtp import SMTP

# Replies after which the server must have closed the connection.
CLOSING_CODES = frozenset((221, 421, 521))

_REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])([ -])([^\r\n]*)\r\n\Z")


class Reply(NamedTuple):
    code: int
    lines: list

    @property
    def text(self):
        return "\n".join(self.lines)


class BadReply(AssertionError):
    """The server wrote something that is not an SMTP reply."""


def build_app(config_dir, plugins, files=None, log=None):
    """An App on ``config_dir`` (created) with ``plugins`` loaded.

    ``files`` adds or overrides config files; the defaults are ``me``
    (mx.example.org), ``loglevel`` 7 (every line, so tracebacks show) and a
    ``spool_dir`` inside ``config_dir``. Plugins are found in
    ``tests/plugins`` first, then ``plugins/``. ``app.captured_log`` is the
    list the log lines go to.
    """
    config_dir = str(config_dir)
    content = {"me": "mx.example.org", "loglevel": "7",
               "spool_dir": os.path.join(config_dir, "spool") + "/",
               "timeout": "30"}
    content.update(files or {})
    content["plugins"] = list(plugins)
    write_config(config_dir, content)
    lines = log if log is not None else []
    app = App([config_dir], log_sink=lines.append,
              plugin_dirs=[TEST_PLUGINS, PLUGIN_DIR])
    app.load_plugins()
    app.captured_log = lines
    return app


class Session:
    """One SMTP session served in a thread; this object is the client end.

    ``greeting`` holds the first reply. ``finish()`` closes the client end,
    waits for the server thread and returns the log lines of this session.
    ``error`` is the traceback text of an exception that escaped
    ``SMTP.run()`` (None when there was none).
    """

    def __init__(self, app, remote_ip="192.0.2.10", remote_host="client.example.net",
                 relay_client=False, timeout=10, read_greeting=True):
        self.app = app
        self.error = None
        self._log_start = len(app.captured_log)
        server_sock, self.sock = socket.socketpair()
        self.sock.settimeout(timeout)
        self.file = self.sock.makefile("rb")
        connection = Connection(remote_ip=remote_ip, remote_port=40000,
                                remote_host=remote_host, local_ip="192.0.2.1",
                                local_port=25, relay_client=relay_client)
        self.connection = connection

        def serve():
            io = LineIO(server_sock)
            try:
                SMTP(app, io, connection).run()
            except BaseException:  # noqa: BLE001 - recorded, then asserted on
                self.error = traceback.format_exc()
            finally:
                io.close()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        self.greeting = self.reply() if read_greeting else None

    # -- sending --------------------------------------------------------------

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        self.sock.sendall(data)

    def send_in_pieces(self, data, cuts=(), pause=0.0):
        """Send ``data`` split at the offsets in ``cuts``, one ``sendall`` per
        piece, sleeping ``pause`` seconds between pieces so the server sees
        them in separate reads."""
        start = 0
        for cut in sorted(set(c for c in cuts if 0 < c < len(data))) + [len(data)]:
            self.sock.sendall(data[start:cut])
            start = cut
            if pause and cut < len(data):
                time.sleep(pause)

    def shutdown_write(self):
        """Tell the server there is no more input (it reads end of file)."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    # -- receiving ----------------------------------------------------------------

    def reply(self):
        """The next (multi-line) reply, or None when the server closed.

        Raises ``BadReply`` for anything that is not a well-formed reply
        (and ``TimeoutError`` when the server says nothing)."""
        lines = []
        code = None
        while True:
            try:
                raw = self.file.readline(65536)
            except ConnectionResetError:
                # A server that closes with our pipelined input unread
                # resets the socket (as TCP would): that is a close too.
                raw = b""
            if not raw:
                if lines:
                    raise BadReply(f"connection closed inside a reply: {lines!r}")
                return None
            match = _REPLY_LINE.match(raw)
            if match is None:
                raise BadReply(f"not a reply line: {raw!r}")
            if code is not None and match[1] != code:
                raise BadReply(f"code changed inside a reply: {raw!r}")
            code = match[1]
            lines.append(match[3].decode("utf-8", "surrogateescape"))
            if match[2] == b" ":
                return Reply(int(code), lines)

    def cmd(self, line):
        self.send(line + "\r\n")
        return self.reply()

    def replies_until_closed(self):
        """Every reply up to the server's close."""
        replies = []
        while True:
            reply = self.reply()
            if reply is None:
                return replies
            replies.append(reply)

    # -- the end ------------------------------------------------------------------

    def finish(self, wait=10):
        """Close the client end, wait for the server thread; return this
        session's log lines. Raises AssertionError when the thread is still
        running after ``wait`` seconds."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.file.close()
        self.sock.close()
        self.thread.join(wait)
        if self.thread.is_alive():
            raise AssertionError("the session thread did not end")
        return self.log()

    def log(self):
        return self.app.captured_log[self._log_start:]


def tracebacks(log_lines):
    """Log lines that show a Python traceback."""
    return [line for line in log_lines if "Traceback (most recent call last)" in line]


# -- the DATA reader's contract as a model ---------------------------------------

class DataVerdict(NamedTuple):
    """What the server must do with the bytes after ``354``.

    ``outcome`` is ``queued`` (250; ``message`` is what lands, LF line ends,
    dots unstuffed), ``too big`` (552), ``bare`` (521 and close: a bare LF
    or CR), or ``incomplete`` (end of input first: 451 and close). ``rest``
    is what follows the final dot (commands again).
    """

    outcome: str
    message: bytes = b""
    rest: bytes = b""


def data_verdict(stream, max_size=0):
    """Decide ``stream`` (the bytes after 354) the way RFC 5321 and our
    DATA promise say: only <CR><LF>.<CR><LF> ends the message; a line that
    does not end in <CR><LF>, or holds a CR elsewhere, refuses it;
    ``max_size`` (0: unlimited) applies to the unstuffed, LF-ended text."""
    message = bytearray()
    pos = 0
    while True:
        newline = stream.find(b"\n", pos)
        if newline < 0:
            partial = stream[pos:]
            # A CR may still be waiting for its LF at the very end.
            return DataVerdict("bare" if b"\r" in partial[:-1] else "incomplete")
        line = stream[pos:newline + 1]
        pos = newline + 1
        if line[-2:-1] != b"\r" or b"\r" in line[:-2]:
            return DataVerdict("bare")
        content = line[:-2]
        if content == b".":
            if max_size and len(message) > max_size:
                return DataVerdict("too big", rest=stream[pos:])
            return DataVerdict("queued", bytes(message), stream[pos:])
        if content.startswith(b"."):
            content = content[1:]
        message += content + b"\n"


def dot_stuff(lines):
    """The DATA stream a correct client sends for ``lines`` (bytes without
    CR or LF): leading dots doubled, CR LF line ends, the final dot."""
    out = bytearray()
    for line in lines:
        if line.startswith(b"."):
            out += b"."
        out += line + b"\r\n"
    return bytes(out + b".\r\n")


_TRACE = re.compile(
    rb"Authentication-Results: [^\n]*\n"
    rb"Received: from [^\n]*\n by [^\n]*\n")


def strip_received(message):
    """``message`` without the Authentication-Results and Received fields
    the server puts on top; asserts they are there."""
    match = _TRACE.match(message)
    assert match, message[:300]
    return message[match.end():]


def queued_files(queue_dir, number):
    """``(message bytes, envelope lines)`` the ``capture`` plugin wrote as
    message ``number``."""
    base = os.path.join(str(queue_dir), str(number))
    with open(base + ".eml", "rb") as handle:
        message = handle.read()
    with open(base + ".env", "rb") as handle:
        envelope = handle.read().decode("utf-8", "surrogateescape").split("\n")[:-1]
    return message, envelope


def queued_number(reply):
    """The message number in capture's ``250 Queued! <n>`` reply."""
    match = re.search(r"Queued! (\d+)", reply.text)
    assert match, reply
    return int(match.group(1))
