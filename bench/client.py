"""The benchmark's own SMTP client, for what smtp-source cannot measure.

Blocking sockets, no library in between, so the client adds as little as
possible to what it times (tens of microseconds per reply):

* ``banner_latencies(port, count)`` — connect-to-banner time of ``count``
  connections made one after another (each then says QUIT);
* ``open_idle(port, count)`` — ``count`` connections that read their
  banner and then stay idle; ``close_all`` says QUIT on each;
* ``send_one(port, message, ...)`` — one message in one session; returns
  the seconds from connect to the ``250`` after DATA; hooks let the caller
  look at the server at the banner and before QUIT.
"""

import socket
import time

SENDER = "sender@sender.example"
RECIPIENT = "rcpt@example.test"
HELO = "bench.example"


class ReplyError(RuntimeError):
    pass


class Session:
    """One client connection with a reply reader."""

    def __init__(self, port, timeout=60):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def reply(self):
        """(code, text of the last line) of the next reply."""
        while True:
            end = self.buffer.find(b"\r\n")
            while end >= 0:
                line = self.buffer[:end]
                self.buffer = self.buffer[end + 2:]
                if len(line) < 4 or line[3:4] != b"-":
                    return int(line[:3] or 0), line[4:].decode("utf-8", "replace")
                end = self.buffer.find(b"\r\n")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ReplyError("connection closed by the server")
            self.buffer += chunk

    def command(self, line, expect):
        self.sock.sendall(line.encode() + b"\r\n")
        code, text = self.reply()
        if code // 100 != expect // 100:
            raise ReplyError(f"{line!r}: {code} {text}")
        return code, text

    def quit(self):
        try:
            self.sock.sendall(b"QUIT\r\n")
            self.reply()
        except (OSError, ReplyError):
            pass
        self.sock.close()


def banner_latencies(port, count):
    """Seconds from connect() to the complete 220 banner, per connection."""
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        session = Session(port)
        code, text = session.reply()
        samples.append(time.perf_counter() - start)
        if code != 220:
            session.quit()
            raise ReplyError(f"banner {code} {text}")
        session.quit()
    return samples


def open_idle(port, count):
    sessions = []
    for _ in range(count):
        session = Session(port)
        code, text = session.reply()
        if code != 220:
            raise ReplyError(f"banner {code} {text}")
        sessions.append(session)
    return sessions


def close_all(sessions):
    for session in sessions:
        session.quit()


def message_of_size(size, line_length=78):
    """A message of ``size`` bytes (CRLF lines of ``line_length`` characters)
    with a small header, ready for DATA (no line starts with a dot)."""
    header = (f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\n"
              "Subject: benchmark\r\nMessage-Id: <big@bench.example>\r\n\r\n").encode()
    line = b"X" * line_length + b"\r\n"
    count = max(0, (size - len(header)) // len(line))
    return header + line * count


def send_one(port, message, at_banner=None, before_quit=None):
    """Send ``message`` in one session; seconds from connect to the 250
    after DATA. ``at_banner()`` runs once the banner is read,
    ``before_quit()`` after the 250 and before QUIT (both untimed)."""
    start = time.perf_counter()
    session = Session(port, timeout=300)
    code, text = session.reply()
    if code != 220:
        raise ReplyError(f"banner {code} {text}")
    paused = 0.0
    if at_banner:
        mark = time.perf_counter()
        at_banner()
        paused = time.perf_counter() - mark
    session.command(f"EHLO {HELO}", 250)
    session.command(f"MAIL FROM:<{SENDER}>", 250)
    session.command(f"RCPT TO:<{RECIPIENT}>", 250)
    session.command("DATA", 354)
    view = memoryview(message)
    for offset in range(0, len(view), 1 << 20):
        session.sock.sendall(view[offset:offset + (1 << 20)])
    if not message.endswith(b"\r\n"):
        session.sock.sendall(b"\r\n")
    session.sock.sendall(b".\r\n")
    code, text = session.reply()
    elapsed = time.perf_counter() - start - paused
    if code != 250:
        session.quit()
        raise ReplyError(f"after DATA: {code} {text}")
    if before_quit:
        before_quit()
    session.quit()
    return elapsed
