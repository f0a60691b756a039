"""The forkserver's parent and its workers.

``Server`` is the parent process of qpsmtpd-forkserver once it is set up
(``qpsmtpd_forkserver.main`` binds the sockets, drops privileges, loads the
application and detaches). It owns the listening sockets and the children,
and nothing else:

* The loop polls the listeners and a signal wake-up pipe. For each client
  it checks the daemon's own limits, runs the ``pre-connection`` hook
  (``hosts_allow``, ``karma``...) and hands the socket to an idle worker
  (see *Workers* below), forking one when none is idle. The parent never
  reads from a client and never waits on one: its replies are single
  non-blocking writes. ``pre-connection`` hooks run in the parent, so every client waits
  for them: they must be quick (no DNS; that belongs in ``connect``).
* Signal handlers only record the signal; the loop acts on it
  (``handle_term``, ``handle_hup``, ...). Children are reaped in the loop,
  never in a handler, and always before a limit is checked, so the counts
  are exact. Every exit status is read: ``cleaning up after <pid>``, plus a
  line for a worker that failed or was killed (``worker <pid> killed by
  signal 9 (SIGKILL) - out of memory?``, ``worker <pid> exited with status
  1 (session failed)``). A crashing worker, a failed fork (``421``, and
  ``fork failed: ...`` in the log) or an accept that runs out of file
  descriptors (accepting pauses 0.1 s, doubling up to 2 s) never ends the
  daemon.
* The application (configuration and plugins) is built once, what
  sessions would load at first use is loaded (``Config.preload``,
  ``app.warm_imports``), then ``gc.freeze()`` moves it out of the
  collector's reach, so the pages stay shared with the children. A changed
  configuration file is noticed within ``CONFIG_RECHECK`` seconds (each
  file is stat()ed at most once a second per process, ``Config.recheck``).
  SIGHUP builds a new one (a broken configuration
  keeps the running one, with a log line); sessions already running keep
  theirs.

Replies the daemon itself sends (before any plugin ran; the socket is closed
after the line)::

    421 Too many concurrent connections, try again later    --limit-connections
    421 too many connections from <ip>, try again later     --max-from-ip
    421 Service temporarily unavailable, try again later    fork() failed

Both limits are the daemon's own and are checked before any plugin runs, so
the per-IP limit holds without ``hosts_allow`` (in qpsmtpd only that plugin
enforced it). ``pre-connection`` plugins still get ``max_conn_ip`` and
``child_addrs`` (the IP strings of the running sessions): ``hosts_allow``
can make the limit stricter for one client (karma history <= 0: one
session, refused with its ``451``) but not looser than ``--max-from-ip``.
``pre-connection`` verdicts are answered as qpsmtpd does: ``550 <message>``
for DENY, ``451 <message>`` for DENYSOFT.

Stopping: on SIGTERM or SIGINT the parent closes its listening sockets and
sends SIGTERM to every worker. A worker finishes the command in progress (a
DATA transfer and its queueing included), then answers ``421 <me> Service
shutting down, closing transmission channel`` and ends the session; a worker
waiting for a command answers it at once. Workers still running after the
grace period are killed (SIGKILL); a second SIGTERM or SIGINT kills them at
once. Workers ignore SIGINT and SIGHUP, so a Ctrl-C on the terminal or a
HUP to the process group goes through the parent.

Workers (``qpsmtpd.worker``): a worker serves one session at a time and up
to ``--max-requests`` sessions (default 1000) one after another, like
Postfix's smtpd (``max_use``) or qpsmtpd-prefork; ``--max-requests 1`` is
qpsmtpd-forkserver's fresh process per connection. The parent keeps
``--idle-children`` spares (default 2) forked ahead, so a client meets a
process that is already running; a worker back from a session waits for
the next one, and idle workers above that number are retired after
``IDLE_RETIRE`` seconds. SIGHUP retires the workers of the old
configuration as soon as they are idle. ``--limit-connections`` counts
sessions, not processes. The parent logs ``cleaning up after <pid>`` when
a worker's session ends (whether the worker lives on or exits), once per
connection as qpsmtpd does.
"""

import errno
import gc
import os
import select
import signal
import socket
import sys
import time
import traceback

from .app import App, warm_imports
from .connection import Connection
from .constants import (
    DENY, DENY_DISCONNECT, DENYSOFT, DENYSOFT_DISCONNECT, LOGCRIT, LOGDEBUG,
    LOGERROR, LOGINFO, LOGWARN)
from .transaction import Transaction
from .worker import (
    EXIT_SESSION_FAILED, EXIT_SETUP_FAILED, HANDOFF_SIZE, READY, Handoff, Worker)

TOO_MANY_CONNECTIONS = "421 Too many concurrent connections, try again later"
TOO_MANY_FROM_IP = "421 too many connections from {ip}, try again later"
SERVICE_UNAVAILABLE = "421 Service temporarily unavailable, try again later"
DEFAULT_GRACE_PERIOD = 30.0
DEFAULT_MAX_REQUESTS = 1000  # sessions per worker
DEFAULT_IDLE_CHILDREN = 2    # spare workers kept forked ahead
IDLE_RETIRE = 60.0           # seconds an idle worker above the spares lives on
CONFIG_RECHECK = 1.0         # seconds between two stat()s of one config file
ACCEPT_BATCH = 64            # accepts per wake-up before signals are looked at
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 2.0
KILL_WAIT = 5.0              # after SIGKILL, give up waiting for a child
_PARENT_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class PreConnection:
    """What ``pre-connection`` plugins see as ``session`` in the parent:
    a fresh connection per accepted socket, handed on to the worker."""

    def __init__(self, app, connection):
        self.app = app
        self.connection = connection
        self.transaction = Transaction()

    def config(self, name, default=None):
        return self.app.config.get(name, default)


class Server:
    """The parent: listeners, children, signals.

    ``options`` are qpsmtpd-forkserver's (``limit_connections``,
    ``max_from_ip``, ``no_rdns``, ``grace_period``, ``max_requests``,
    ``idle_children``); ``app`` the loaded
    application; ``build_app`` a callable returning a new one for SIGHUP
    (default: the same configuration directories, plugins loaded again).
    ``listeners`` are non-blocking listening sockets; ``pid_file`` (with
    ``remove()``) and ``notify`` (a ``SystemdNotify``) are optional.
    """

    def __init__(self, options, app, build_app=None):
        self.options = options
        self.app = app
        self.build_app = build_app or self._rebuild_app
        self.listeners = []
        self.children = {}          # pid -> remote IP, one per running session
        self.workers = {}           # pid -> WorkerSlot, every worker process
        self.idle = []              # slots waiting for a client, oldest first
        self.generation = 0         # of the application; a reload adds one
        self._channels = {}         # channel fd -> WorkerSlot
        self.pid_file = None
        self.notify = None
        self._signals = []
        self._wakeup = None
        self._stop_deadline = None  # monotonic; set by the first TERM/INT
        self._killed_at = None
        self._killed = set()        # pids we ended on purpose
        self._paused_until = 0.0
        self._prepared = False
        self._backoff = 0.0

    def log(self, level, message):
        self.app.log(level, message)

    @property
    def stopping(self):
        return self._stop_deadline is not None

    # -- the loop ----------------------------------------------------------------

    def prepare(self):
        """Load what sessions would load at first use, then freeze the heap
        (before the pid file says we serve: nothing may fail after it)."""
        prepare_app(self.app)
        freeze_heap()
        self._prepared = True

    def serve(self):
        """Accept and fork until stopped; returns the exit status."""
        if self._wakeup is None:
            self.install_signals()
        if not self._prepared:
            self.prepare()
        if self.notify:
            self.notify.send(f"READY=1\nMAINPID={os.getpid()}")
        while True:
            try:
                if self._step():
                    break
            except Exception as exc:    # a bug here must not orphan the sessions
                self._log_traceback(f"the accept loop failed: {exc!r}; going on")
                time.sleep(0.1)
        self._finish()
        return 0

    def _step(self):
        """One turn of the loop: signals, children, then wait for a client
        or a signal. True when the daemon may end."""
        self._handle_signals()
        self.reap()
        if self.stopping and self._shutdown_done():
            return True
        self.tend_pool()
        wake_fd = self._wakeup[0]
        poller = select.poll()
        poller.register(wake_fd, select.POLLIN)
        channels = self._channels
        for fd in channels:
            poller.register(fd, select.POLLIN)
        listeners = {}
        if not self.stopping and time.monotonic() >= self._paused_until:
            listeners = {sock.fileno(): sock for sock in self.listeners}
            for fd in listeners:
                poller.register(fd, select.POLLIN)
        ready = [fd for fd, _ in poller.poll(self._poll_timeout())]
        if wake_fd in ready:
            _drain(wake_fd)
            self._handle_signals()     # a stop must win over waiting clients
        for fd in ready:               # workers back first: they take the clients
            slot = channels.get(fd)
            if slot is not None:
                self.from_worker(slot)
        for fd in ready:
            if fd in listeners and not self.stopping:
                self.accept_from(listeners[fd])
        return False

    def _poll_timeout(self):
        """Milliseconds until something is due (a deadline, the end of an
        accept pause); at most one second."""
        now = time.monotonic()
        due = now + 1.0
        if self.stopping:
            due = min(due, self._stop_deadline if self._killed_at is None
                      else self._killed_at + KILL_WAIT)
        if self._paused_until > now:
            due = min(due, self._paused_until)
        return max(0, int((due - now) * 1000) + 1)

    # -- accepting -----------------------------------------------------------------

    def accept_from(self, listener):
        """Accept what is waiting on ``listener`` (at most a batch)."""
        for _ in range(ACCEPT_BATCH):
            try:
                client, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    self._pause_accepting(exc)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue    # the client left before we got to it
                self.log(LOGERROR, f"accept failed: {exc.strerror}")
                return
            self._backoff = 0.0
            try:
                self.handle_client(client, peer)
            except Exception as exc:  # one client must never stop the daemon
                self._log_traceback(f"cannot serve a client: {exc!r}")
                _close(client)

    def _pause_accepting(self, exc):
        """EMFILE and friends: stop polling the listeners for a while, so
        the loop neither spins nor stops handling signals and children."""
        self._backoff = min(BACKOFF_MAX, self._backoff * 2 or BACKOFF_FIRST)
        self._paused_until = time.monotonic() + self._backoff
        self.log(LOGERROR, f"accept failed: {exc.strerror}; not accepting for "
                           f"{self._backoff:g} s")

    def handle_client(self, client, peer):
        """Limits, ``pre-connection``, fork: one accepted socket."""
        client.setblocking(False)
        remote_ip = plain_ip(peer[0])
        local = client.getsockname()
        self.reap()
        refusal = self.over_limit(remote_ip)
        if refusal:
            refuse(client, refusal)
            return
        connection = Connection(remote_ip=remote_ip, remote_port=peer[1],
                                local_ip=plain_ip(local[0]), local_port=local[1])
        if not self.pre_connection(client, connection):
            return
        self.start_session(client, connection)

    def over_limit(self, remote_ip):
        """The daemon's 421 line when a limit is reached, else None."""
        limit = self.options.limit_connections
        if len(self.children) >= limit:
            self.log(LOGINFO, f"Too many connections: {len(self.children)} >= "
                              f"{limit}.  Refusing {remote_ip}")
            return TOO_MANY_CONNECTIONS
        per_ip = self.options.max_from_ip
        if per_ip:
            count = sum(1 for ip in self.children.values() if ip == remote_ip)
            if count >= per_ip:
                self.log(LOGINFO, f"too many connections from {remote_ip}: "
                                  f"{count} >= {per_ip}.  Refusing it")
                return TOO_MANY_FROM_IP.format(ip=remote_ip)
        return None

    def pre_connection(self, client, connection):
        """Run ``pre-connection``; on a refusal answer and close, return False."""
        if not self.app.dispatcher.has_hook("pre-connection"):
            return True
        info = {
            "remote_ip": connection.remote_ip, "remote_port": connection.remote_port,
            "local_ip": connection.local_ip, "local_port": connection.local_port,
            "max_conn_ip": self.options.max_from_ip,
            "child_addrs": list(self.children.values()),
        }
        session = PreConnection(self.app, connection)
        result = self.app.dispatcher.run_hooks(session, "pre-connection", info)
        if result.code in (DENY, DENY_DISCONNECT):
            text = result.messages[0] if result.messages else \
                "Sorry, service not available for you"
            reply = f"550 {text}"
        elif result.code in (DENYSOFT, DENYSOFT_DISCONNECT):
            text = result.messages[0] if result.messages else "Sorry, try again later"
            reply = f"451 {text}"
        else:
            return True
        self.log(LOGINFO, reply)
        refuse(client, reply)
        return False

    def start_session(self, client, connection):
        """Hand ``client`` to an idle worker, or fork one for it."""
        handoff = Handoff(connection, len(self.children))
        try:
            packet = handoff.pack()
        except Exception as exc:    # a pre-connection plugin noted something odd
            self.log(LOGWARN, f"cannot hand the connection over ({exc!r}); forking")
            packet = None
        if packet is not None and len(packet) > HANDOFF_SIZE:
            self.log(LOGWARN, f"connection notes too big to hand over ({len(packet)} "
                              "bytes); forking")
            packet = None
        while packet is not None and self.idle:
            slot = self.idle.pop()
            try:
                socket.send_fds(slot.channel, [packet], [client.fileno()])
            except OSError as exc:      # it died while idle: reaped soon
                self.log(LOGWARN, f"worker {slot.pid} cannot take a client: "
                                  f"{exc.strerror or exc!r}")
                self.retire(slot)
                continue
            self._busy(slot, connection)
            client.close()
            return
        try:
            slot = self.fork_worker(client, handoff)
        except OSError as exc:
            self.log(LOGCRIT, f"fork failed: {exc.strerror}; answering "
                              f"{connection.remote_ip} with 421")
            refuse(client, SERVICE_UNAVAILABLE)
            return
        self._busy(slot, connection)
        client.close()

    def _busy(self, slot, connection):
        slot.state = "busy"
        self.children[slot.pid] = connection.remote_ip

    def fork_worker(self, client=None, handoff=None):
        """A new worker (serving ``client`` first, if given); its slot.
        OSError when the system cannot fork."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # Signals stay blocked across fork() so the child cannot run the
        # parent's handlers before it has installed its own.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _PARENT_SIGNALS)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            ours.close()
            theirs.close()
            raise
        if pid == 0:
            try:
                ours.close()
                Worker(self, theirs, mask, client, handoff).run()
            finally:
                os._exit(EXIT_SETUP_FAILED)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        theirs.close()
        ours.setblocking(False)
        slot = WorkerSlot(pid, ours, self.generation)
        self.workers[pid] = slot
        self._channels[ours.fileno()] = slot
        return slot

    # -- the pool ----------------------------------------------------------------------

    def tend_pool(self):
        """Retire workers idle too long above the spares; fork missing spares."""
        if self.stopping:
            return
        spares = self.options.idle_children
        now = time.monotonic()
        while len(self.idle) > spares and now - self.idle[0].idle_since > IDLE_RETIRE:
            self.retire(self.idle[0])
        starting = sum(1 for slot in self.workers.values() if slot.state == "starting")
        room = self.options.limit_connections + spares - len(self.workers)
        for _ in range(min(spares - len(self.idle) - starting, room)):
            try:
                self.fork_worker()
            except OSError as exc:
                self.log(LOGERROR, f"cannot fork a spare worker: {exc.strerror}")
                return

    def from_worker(self, slot):
        """A worker wrote: ``R`` (ready for a client), or end of file."""
        try:
            data = slot.channel.recv(16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data != READY:
            self.retire(slot)       # it is exiting; the reaper logs how
            return
        if slot.state == "busy":
            self._session_ended(slot)
        if self.stopping or slot.generation != self.generation:
            self.retire(slot)
            return
        slot.state = "idle"
        slot.idle_since = time.monotonic()
        self.idle.append(slot)

    def _session_ended(self, slot):
        slot.state = "done"
        self.children.pop(slot.pid, None)
        self.log(LOGINFO, f"cleaning up after {slot.pid}")

    def retire(self, slot):
        """Close the parent's end of ``slot``'s channel: an idle worker
        reads end of file and exits; a busy one exits after its session."""
        if slot in self.idle:
            self.idle.remove(slot)
        if slot.channel is not None:
            self._channels.pop(slot.channel.fileno(), None)
            slot.channel.close()
            slot.channel = None
        if slot.state != "busy":
            slot.state = "retired"

    # -- children --------------------------------------------------------------------

    def reap(self):
        """Collect every exited child without blocking."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                if self.workers:
                    self.log(LOGERROR, f"{len(self.workers)} workers vanished")
                    for slot in list(self.workers.values()):
                        self.retire(slot)
                    self.workers.clear()
                    self.children.clear()
                return
            if pid == 0:
                return
            self._reaped(pid, status)

    def _reaped(self, pid, status):
        slot = self.workers.pop(pid, None)
        if slot is None:
            self.log(LOGDEBUG, f"reaped process {pid}, not a worker")
            return
        in_session = slot.state == "busy"
        slot.state = "exited"
        self.retire(slot)
        self.children.pop(pid, None)
        on_purpose = pid in self._killed
        self._killed.discard(pid)
        if os.WIFSIGNALED(status):
            number = os.WTERMSIG(status)
            name = _signal_name(number)
            if on_purpose:
                self.log(LOGINFO, f"worker {pid} ended by {name}")
            else:
                hint = " - out of memory?" if number == signal.SIGKILL else ""
                self.log(LOGERROR, f"worker {pid} killed by signal {number} "
                                   f"({name}){hint}")
        elif os.WIFEXITED(status) and os.WEXITSTATUS(status):
            code = os.WEXITSTATUS(status)
            why = {EXIT_SESSION_FAILED: "session failed",
                   EXIT_SETUP_FAILED: "set-up failed"}.get(code, "unknown status")
            self.log(LOGERROR, f"worker {pid} exited with status {code} ({why})")
        if in_session:
            self.log(LOGINFO, f"cleaning up after {pid}")
        else:
            self.log(LOGDEBUG, f"worker {pid} ended")

    def _signal_children(self, signum):
        for pid in list(self.workers):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def _kill_children(self):
        self._killed.update(self.workers)
        self._killed_at = time.monotonic()
        self._signal_children(signal.SIGKILL)

    # -- signals -----------------------------------------------------------------------

    def install_signals(self):
        """Record TERM/INT/HUP from now on. Called before the pid file is
        written, so a signal sent as soon as the pid is known is not lost
        (or, for HUP, fatal)."""
        # The C-level handler writes each signal's number to the wake-up
        # pipe, so poll() returns at once; the Python-level handlers below
        # only record (SIGCHLD needs a handler for the byte to be written).
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wakeup = (wake_r, wake_w)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._record_signal)
        signal.signal(signal.SIGCHLD, _wake_only)

    def _record_signal(self, signum, frame):
        self._signals.append(signum)

    def _handle_signals(self):
        while self._signals:
            signum = self._signals.pop(0)
            handler = getattr(self, "handle_" + _signal_name(signum)[3:].lower(), None)
            if handler is not None:
                handler()

    def handle_term(self, name="SIGTERM"):
        if not self.stopping:
            return self.begin_shutdown(name)
        if self._killed_at is None and self.workers:
            self.log(LOGINFO, f"{name} again: ending {len(self.children)} "
                              "sessions now")
            self._kill_children()

    def handle_int(self):
        self.handle_term("SIGINT")

    def handle_hup(self):
        if not self.stopping:
            self.reload()

    def begin_shutdown(self, name):
        grace = self.options.grace_period
        self.log(LOGINFO, f"{name} received: not accepting connections; "
                          f"{len(self.children)} sessions may finish within {grace:g} s")
        if self.notify:
            self.notify.send("STOPPING=1")
        for sock in self.listeners:
            sock.close()
        self.listeners = []
        self._stop_deadline = time.monotonic() + grace
        for slot in list(self.idle):
            self.retire(slot)
        self._signal_children(signal.SIGTERM)

    def _shutdown_done(self):
        """During a stop: True when the loop may end."""
        if not self.workers:
            return True
        now = time.monotonic()
        if self._killed_at is None:
            if now >= self._stop_deadline:
                self.log(LOGWARN, f"grace period over: ending {len(self.children)} "
                                  "sessions")
                self._kill_children()
            return False
        if now - self._killed_at >= KILL_WAIT:
            self.log(LOGERROR, f"{len(self.workers)} workers did not end; leaving them")
            return True
        return False

    def _finish(self):
        for sock in self.listeners:
            sock.close()
        self.listeners = []
        signal.set_wakeup_fd(-1)
        for fd in self._wakeup:
            os.close(fd)
        if self.pid_file is not None:
            self.pid_file.remove()
        self.log(LOGINFO, "qpsmtpd-forkserver stopped")

    # -- SIGHUP ----------------------------------------------------------------------

    def reload(self):
        """Build a new application; keep the running one when that fails."""
        self.log(LOGINFO, "SIGHUP received: reloading configuration and plugins")
        if self.notify:
            self.notify.send("RELOADING=1\nMONOTONIC_USEC=%d"
                             % (time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000))
        gc.disable()
        try:
            app = self.build_app()
        except Exception as exc:
            gc.enable()
            lines = str(exc).rstrip().splitlines() or [repr(exc)]
            self.log(LOGERROR, "reload failed, keeping the running configuration: "
                               + lines[0])
            for line in lines[1:]:
                self.log(LOGERROR, line)
        else:
            self.app = app
            prepare_app(app)
            freeze_heap()
            self.generation += 1
            for slot in list(self.idle):    # the new spares come with the next turn
                self.retire(slot)
            self.log(LOGINFO, "configuration and plugins reloaded")
        if self.notify:
            self.notify.send("READY=1")

    def _rebuild_app(self):
        app = App(self.app.config.dirs).load_plugins()
        app.spool_dir()     # an unusable spool_dir is a broken configuration
        return app

    # -- the child's side ------------------------------------------------------------

    def close_in_child(self):
        """Release what belongs to the parent (in a freshly forked worker)."""
        signal.set_wakeup_fd(-1)
        for sock in self.listeners:
            sock.close()
        for fd in self._wakeup or ():
            os.close(fd)
        for slot in self.workers.values():
            if slot.channel is not None:
                slot.channel.close()
        if self.pid_file is not None:
            self.pid_file.close()
        if self.notify is not None:
            self.notify.close()

    def _log_traceback(self, message):
        self.log(LOGCRIT, message)
        for line in traceback.format_exc().rstrip().splitlines():
            self.log(LOGCRIT, line)


class WorkerSlot:
    """The parent's view of one worker: its pid, the parent's end of its
    channel, the application generation it was forked with, and its state:
    ``starting`` (a spare not ready yet), ``idle``, ``busy`` (in a session),
    ``done`` (session ended), ``retired`` (told to exit) or ``exited``."""

    __slots__ = ("pid", "channel", "generation", "state", "idle_since")

    def __init__(self, pid, channel, generation):
        self.pid = pid
        self.channel = channel
        self.generation = generation
        self.state = "starting"
        self.idle_since = 0.0

    def __repr__(self):
        return f"<worker {self.pid} {self.state}>"


class SystemdNotify:
    """sd_notify(3) without libsystemd: state lines to ``$NOTIFY_SOCKET``."""

    def __init__(self, address):
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @classmethod
    def from_environment(cls, environ=os.environ):
        """The notifier systemd asked for (``Type=notify``), or None. The
        variable is removed so workers and plugins never notify."""
        address = environ.pop("NOTIFY_SOCKET", None)
        if not address or address[0] not in "/@":
            return None
        if address[0] == "@":
            address = "\0" + address[1:]
        return cls(address)

    def send(self, state):
        try:
            self.sock.sendto(state.encode(), self.address)
        except OSError:
            pass

    def close(self):
        self.sock.close()


def prepare_app(app):
    """What sessions would build at first use, built once in the parent:
    the configuration cache, deferred imports, the DNS resolver."""
    app.config.preload()
    app.config.recheck = CONFIG_RECHECK
    warm_imports()
    if "qpsmtpd.dns" in sys.modules:    # a DNS plugin is loaded
        app.resolver  # noqa: B018  (built from config/dns_servers now)


def freeze_heap():
    """Collect, then move every object to the permanent generation: the
    collector never writes to those pages again, so forked workers keep
    sharing them with the parent (and with each other)."""
    gc.disable()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    gc.enable()


def refuse(client, reply):
    """Send one reply line without waiting, then close the socket.

    Input the client already sent is read and dropped first, so closing
    does not reset the connection before the line arrives.
    """
    data = reply.encode("utf-8", "replace") + b"\r\n"
    try:
        client.setblocking(False)
        client.send(data)
        client.shutdown(socket.SHUT_WR)
        for _ in range(4):
            if not client.recv(65536):
                break
    except OSError:
        pass
    _close(client)


def plain_ip(ip):
    """``::ffff:192.0.2.7`` (a v4 client on a v6 socket) as ``192.0.2.7``."""
    return ip[7:] if ip.startswith("::ffff:") and "." in ip else ip


def _close(sock):
    try:
        sock.close()
    except OSError:
        pass


def _drain(fd):
    try:
        while os.read(fd, 4096):
            pass
    except (BlockingIOError, InterruptedError):
        pass


def _wake_only(signum, frame):
    pass


def _signal_name(number):
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"
