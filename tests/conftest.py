"""Shared fixtures: a real SMTP session over a socketpair, a real daemon.

``smtp_session(plugins=[...], config={...}, **connection)`` builds an
``App`` from a fresh config directory under ``tmp_path``, runs
``SMTP.run()`` in a thread on one end of a ``socket.socketpair()`` and hands
back a ``Client`` on the other end that speaks raw SMTP lines. Nothing of
the engine is mocked: the bytes go through the kernel both ways.

``Client.cmd(line)`` sends one line and returns ``Reply(code, lines)``;
``Client.log`` holds the session's log lines (all levels).

``plugin_session`` is ``smtp_session`` with the test plugins of
``tests/plugins`` loadable too. ``TRACE_HEADERS``/``strip_trace`` know the two
header fields the server prepends to every message it queues.
"""

import os
import re
import socket
import sys
import threading
from typing import NamedTuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from qpsmtpd import __version__  # noqa: E402
from qpsmtpd.app import App  # noqa: E402
from qpsmtpd.connection import Connection  # noqa: E402
from qpsmtpd.lineio import LineIO  # noqa: E402
from qpsmtpd.smtp import SMTP  # noqa: E402

PLUGIN_DIR = os.path.join(ROOT, "plugins")
TEST_PLUGINS = os.path.join(ROOT, "tests", "plugins")

# The two header fields the server prepends to a message from the default
# client (192.0.2.10, client.example.net, no AUTH), as the queue sees them.
DATE = rb"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}"
RECEIVED = (
    rb"Received: from client\.example\.net \(HELO client\.example\.net\) "
    rb"\(192\.0\.2\.10\)\n"
    rb" by mx\.example\.org \(qpsmtpd/" + re.escape(__version__.encode())
    + rb"\) with (?P<proto>E?SMTP); " + DATE + rb"\n")
TRACE_HEADERS = re.compile(rb"Authentication-Results: mx\.example\.org; auth=none\n"
                           + RECEIVED)


def strip_trace(message, proto=b"ESMTP"):
    """``message`` (bytes) without the two header fields the server prepends;
    asserts they open it, with ``proto`` as the Received protocol."""
    match = TRACE_HEADERS.match(message)
    assert match, message[:300]
    assert match["proto"] == proto, match[0]
    return message[match.end():]


class Reply(NamedTuple):
    code: int
    lines: list

    @property
    def text(self):
        return "\n".join(self.lines)


class Client:
    """The client end of a session: raw lines in, parsed replies out."""

    def __init__(self, sock, log, thread=None, session_holder=None):
        self.sock = sock
        self.sock.settimeout(10)
        self.file = sock.makefile("rb")
        self.log = log
        self.thread = thread
        self._holder = session_holder if session_holder is not None else {}

    @property
    def session(self):
        return self._holder.get("session")

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        self.sock.sendall(data)

    def reply(self):
        """Read one (multi-line) reply; Reply(0, []) when the server closed."""
        lines = []
        while True:
            raw = self.file.readline()
            if not raw:
                return Reply(0, lines)
            text = raw.decode("utf-8", "surrogateescape").rstrip("\r\n")
            lines.append(text[4:])
            if len(text) < 4 or text[3] != "-":
                return Reply(int(text[:3]), lines)

    def cmd(self, line):
        self.send(line + "\r\n")
        return self.reply()

    def closed(self):
        """True when the server has closed its end (reads EOF)."""
        return self.file.readline() == b""

    def start_data(self, sender, recipients, helo="EHLO client.example.net"):
        """HELO/EHLO (none when ``helo`` is None: a further transaction in
        the session), MAIL, RCPT for each recipient, each accepted, then
        DATA; returns DATA's reply (asserted 354)."""
        if helo is not None:
            assert self.cmd(helo).code == 250
        assert self.cmd(f"MAIL FROM:<{sender}>").code == 250
        for recipient in recipients:
            assert self.cmd(f"RCPT TO:<{recipient}>").code == 250
        reply = self.cmd("DATA")
        assert reply.code == 354
        return reply

    def send_message(self, sender, recipients, body, helo="EHLO client.example.net"):
        """Whole transaction (see ``start_data`` for ``helo``); returns the
        reply to the final dot."""
        self.start_data(sender, recipients, helo)
        self.send(body)
        return self.reply()

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.file.close()
        self.sock.close()
        if self.thread is not None:
            self.thread.join(10)

    def log_contains(self, fragment):
        return any(fragment in line for line in self.log)


def write_config(config_dir, files):
    os.makedirs(config_dir, exist_ok=True)
    for name, content in files.items():
        path = os.path.join(config_dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if isinstance(content, (list, tuple)):
            content = "\n".join(content) + "\n"
        mode = "wb" if isinstance(content, bytes) else "w"
        with open(path, mode) as handle:
            handle.write(content)


@pytest.fixture
def daemon(tmp_path):
    """A factory of real qpsmtpd-forkservers (``forkserver_fixtures.Daemon``)
    in ``tmp_path``, all stopped at the end of the test."""
    from forkserver_fixtures import Daemon
    started = []

    def factory(**kwargs):
        instance = Daemon(tmp_path / f"d{len(started)}", **kwargs)
        started.append(instance)
        return instance

    yield factory
    for instance in started:
        instance.stop()


@pytest.fixture
def make_app(tmp_path):
    """Factory: App(plugins, config) with its own config dir and spool."""

    def factory(plugins=(), config=None, log=None, plugin_dirs=None):
        config_dir = tmp_path / "config"
        files = {"me": "mx.example.org", "spool_dir": str(tmp_path / "spool") + "/",
                 "loglevel": "7"}
        files.update(config or {})
        files["plugins"] = list(plugins)
        write_config(str(config_dir), files)
        lines = log if log is not None else []
        app = App([str(config_dir)], log_sink=lines.append,
                  plugin_dirs=plugin_dirs or [PLUGIN_DIR])
        app.load_plugins()
        app.captured_log = lines
        return app

    return factory


@pytest.fixture
def smtp_session(make_app):
    """Factory: a running session and its Client (greeting already read)."""
    clients = []

    def factory(plugins=(), config=None, remote_ip="192.0.2.10",
                remote_host="client.example.net", relay_client=False,
                app=None, read_greeting=True, local_port=25, **extra):
        app = app or make_app(plugins, config)
        server_sock, client_sock = socket.socketpair()
        connection = Connection(remote_ip=remote_ip, remote_port=40000,
                                remote_host=remote_host, local_ip="192.0.2.1",
                                local_port=local_port, relay_client=relay_client)
        for key, value in extra.items():
            setattr(connection, key, value)
        holder = {}

        def serve():
            io = LineIO(server_sock)
            session = SMTP(app, io, connection)
            holder["session"] = session
            try:
                session.run()
            finally:
                io.close()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        client = Client(client_sock, app.captured_log, thread, holder)
        client.app = app
        clients.append(client)
        if read_greeting:
            client.greeting = client.reply()
        return client

    yield factory
    for client in clients:
        client.close()


@pytest.fixture
def plugin_session(make_app, smtp_session):
    """Factory like ``smtp_session``, the plugins also from tests/plugins."""

    def factory(plugins=(), config=None, **connection):
        app = make_app(plugins, config, plugin_dirs=[TEST_PLUGINS, PLUGIN_DIR])
        return smtp_session(app=app, **connection)

    return factory


@pytest.fixture
def queue_dir(tmp_path):
    """The directory for the test plugin ``capture <dir>``."""
    return tmp_path / "queue"


@pytest.fixture
def mta(plugin_session, queue_dir, tmp_path):
    """A session that accepts every recipient; ``queue`` is the last plugin
    (the capture plugin by default)."""
    def factory(*plugins, queue=None, read_greeting=True, **config):
        files = {name: str(value) for name, value in config.items()}
        queue = queue or f"capture {queue_dir}"
        client = plugin_session([*plugins, "returns rcpt OK", queue], files,
                                read_greeting=read_greeting)
        client.spool = files.get("spool_dir", str(tmp_path / "spool"))
        return client
    return factory


def spool_files(client):
    """What is left in the spool directory of an ``mta`` session."""
    return os.listdir(client.spool) if os.path.isdir(client.spool) else []


def captured_messages(queue_dir):
    """Contents (bytes) of every message ``capture`` queued, in file-name order."""
    if not os.path.isdir(queue_dir):
        return []
    result = []
    for name in sorted(os.listdir(queue_dir)):
        if name.endswith(".eml"):
            with open(os.path.join(queue_dir, name), "rb") as handle:
                result.append(handle.read())
    return result


def maildir_messages(path):
    """Contents (bytes) of every message in a Maildir's new/, sorted by name."""
    new = os.path.join(str(path), "new")
    if not os.path.isdir(new):
        return []
    result = []
    for name in sorted(os.listdir(new)):
        with open(os.path.join(new, name), "rb") as handle:
            result.append(handle.read())
    return result
