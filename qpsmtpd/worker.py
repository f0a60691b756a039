"""The forkserver's worker: SMTP sessions, one at a time, in a child process.

A worker is forked by ``qpsmtpd.forkserver.Server`` either with a client
already accepted (no spare was idle) or as a spare with none. It serves
sessions one after another, up to ``--max-requests`` of them, and between
two sessions waits on its *channel*, a Unix datagram socket pair shared with
the parent:

* parent -> worker: one packet per client, the accepted socket attached
  (``SCM_RIGHTS``) and a pickled ``Handoff`` (the ``Connection`` the
  ``pre-connection`` hooks saw, and the session count for the log line);
* worker -> parent: ``R`` ("ready") once a session ended and the worker can
  take the next. A worker that will not take another (``--max-requests``
  reached, the daemon stopping, the session failed) sends nothing and exits;
* the parent closes its end to retire a worker (idle too long, or built
  from a configuration SIGHUP replaced): the worker reads end-of-file and
  exits.

Exit statuses: 0 (done), 1 (a session failed with an unexpected exception,
logged with its traceback: such a worker is never reused), 2 (set-up failed
before the first session). Process titles: ``qpsmtpd: spare`` between
sessions, ``qpsmtpd: 192.0.2.7 (mail.example.org) MAIL`` during one.

Per-connection state lives in the session's ``Connection`` and
``Transaction``; plugin objects are shared by every session the worker
serves (the plugin contract, docs/PLUGINS.md), so nothing of one session
reaches the next.

Stopping: on SIGTERM a worker waiting for a command answers ``421 <me>
Service shutting down, closing transmission channel`` at once; one running
a command (a DATA transfer and its queueing included) answers it first. An
idle spare exits. Workers ignore SIGINT and SIGHUP: those go to the parent.
"""

import os
import pickle
import re
import signal
import socket
import traceback

from .constants import LOGCRIT, LOGINFO
from .dispatch import WATCHDOG
from .lineio import LineIO
from .smtp import SMTP

try:
    from setproctitle import setproctitle
except ImportError:  # titles are a convenience; serve mail without them
    setproctitle = None

SHUTTING_DOWN = "{me} Service shutting down, closing transmission channel"
READY = b"R"
HANDOFF_SIZE = 65536        # a pickled Connection is a few hundred bytes

EXIT_OK, EXIT_SESSION_FAILED, EXIT_SETUP_FAILED = 0, 1, 2
_TITLE_HOST = re.compile(r"[^A-Za-z0-9.\-\[\]:]")


class Handoff:
    """What travels with a client socket from the parent to a worker."""

    def __init__(self, connection, sessions):
        self.connection = connection
        self.sessions = sessions        # other sessions running (qpsmtpd logs it)

    def pack(self):
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)


class SessionShutdown(Exception):
    """Raised in a worker waiting for a command (or a client) when the
    daemon stops."""


class Worker:
    """The child half. ``run`` never returns: it ends with ``os._exit``."""

    def __init__(self, server, channel, signal_mask, client=None, handoff=None):
        self.server = server
        self.app = server.app
        self.options = server.options
        self.channel = channel
        self.signal_mask = signal_mask
        self.client = client
        self.handoff = handoff
        self.connection = handoff.connection if handoff else None
        self.io = None
        self.stage = "spare"
        self._title = None
        self.waiting = False            # for a command, or for a client
        self.stop_requested = False
        self.served = 0

    def run(self):
        status = EXIT_SETUP_FAILED
        try:
            self.leave_parent()
            status = EXIT_SESSION_FAILED
            if self.client is not None:
                self.serve()
            while self.takes_another():
                if not self.next_client():
                    break
                self.serve()
            status = EXIT_OK
        except SessionShutdown:
            status = EXIT_OK
        except SystemExit as exc:   # a plugin called sys.exit()
            status = exc.code if isinstance(exc.code, int) else \
                EXIT_OK if exc.code is None else EXIT_SESSION_FAILED
        except BaseException as exc:
            try:
                self.app.log(LOGCRIT, f"worker failed: {exc!r}")
                for line in traceback.format_exc().rstrip().splitlines():
                    self.app.log(LOGCRIT, line)
            except BaseException:
                pass
        finally:
            os._exit(status)

    def leave_parent(self):
        self.set_stage(self.stage)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)   # plugins run programs
        self.server.close_in_child()
        signal.pthread_sigmask(signal.SIG_SETMASK, self.signal_mask)
        self.channel.setblocking(True)
        if self.client is None:     # a spare: get ready before the first client
            WATCHDOG.start()

    # -- between sessions -------------------------------------------------------

    def takes_another(self):
        return self.served < self.options.max_requests and not self.stop_requested

    def next_client(self):
        """Tell the parent we are ready and wait for a client; False when
        the parent retired us (end of file on the channel)."""
        try:
            self.channel.send(READY)
        except OSError:
            return False                # the parent is gone
        self.connection = None
        self.set_stage("spare")
        self.waiting = True
        try:
            if self.stop_requested:
                raise SessionShutdown()
            data, fds, _, _ = socket.recv_fds(self.channel, HANDOFF_SIZE, 1)
        except ConnectionError:
            return False
        finally:
            self.waiting = False
        if not fds:
            return False
        self.client = socket.socket(fileno=fds[0])
        for fd in fds[1:]:
            os.close(fd)
        self.handoff = pickle.loads(data)
        self.connection = self.handoff.connection
        return True

    # -- one session --------------------------------------------------------------

    def serve(self):
        """One SMTP session on ``self.client``."""
        self.served += 1
        client, connection = self.client, self.connection
        client.setblocking(True)
        if not self.options.no_rdns:
            connection.remote_host = connection.remote_info = \
                reverse_name(connection.remote_ip)
        os.environ["TCPREMOTEIP"] = connection.remote_ip
        os.environ["TCPREMOTEHOST"] = connection.remote_host
        os.environ["TCPLOCALIP"] = connection.local_ip
        self.set_stage("connect")
        self.app.log(LOGINFO, f"Accepted connection {self.handoff.sessions}/"
                              f"{self.options.limit_connections} from "
                              f"{connection.remote_ip} / {connection.remote_host}")
        self.io = WorkerIO(client, self)
        try:
            session = WorkerSession(self.app, self.io, connection)
            session.worker = self
            session.run()
        finally:
            self.io.close()
            client.close()
            self.io = self.client = self.handoff = None

    def set_stage(self, stage):
        self.stage = stage
        if setproctitle is None:
            return
        connection = self.connection
        if connection is None:
            title = "qpsmtpd: spare"
        else:
            host = _TITLE_HOST.sub("", connection.remote_host or "")
            shown = stage.upper() if stage not in ("connect", "idle", "end") else stage
            title = f"qpsmtpd: {connection.remote_ip} ({host}) {shown}"
        if title != self._title:
            self._title = title
            setproctitle(title)

    def _on_term(self, signum, frame):
        if self.stop_requested:
            return
        self.stop_requested = True
        if self.waiting:
            raise SessionShutdown()


class WorkerIO(LineIO):
    """``LineIO`` whose wait for a command a stopping daemon may interrupt."""

    def __init__(self, sock, worker):
        super().__init__(sock)
        self.worker = worker

    def read_line(self, limit=65536):
        worker = self.worker
        if worker.stage != "idle":
            return super().read_line(limit)
        worker.waiting = True
        try:
            if worker.stop_requested:
                raise SessionShutdown()
            return super().read_line(limit)
        finally:
            worker.waiting = False


class WorkerSession(SMTP):
    """The SMTP session of a worker: it reports its stage (the process
    title) and ends politely when the daemon stops.

    The stage is the verb while a command runs and ``idle`` while a command
    is awaited; a stop requested while a command runs takes effect when it
    has been answered.
    """

    worker = None

    def command_loop(self):
        worker = self.worker
        worker.set_stage("idle")
        try:
            if worker.stop_requested:
                raise SessionShutdown()
            super().command_loop()
        except SessionShutdown:
            self.shut_down()
        finally:
            worker.set_stage("end")

    def dispatch(self, line):
        verb = line.partition(" ")[0].lower()
        worker = self.worker
        worker.set_stage(verb if verb in self.known_verbs else "unknown")
        try:
            super().dispatch(line)
        finally:
            worker.set_stage("idle")
        if worker.stop_requested:
            self.shut_down()

    def shut_down(self):
        if self.disconnected:
            return
        self.log(LOGINFO, "the server is shutting down: ending the session")
        self.respond(421, SHUTTING_DOWN.format(me=self.me), esc="4.3.2")
        self.disconnect()


def reverse_name(ip):
    """The client's first PTR name, or ``Unknown`` (qpsmtpd-forkserver)."""
    try:
        return socket.gethostbyaddr(ip)[0]
    except (OSError, UnicodeError):
        return "Unknown"
