"""qpsmtpd-forkserver: listen, fork one worker per connection, reap.

Options follow qpsmtpd-forkserver (``--port``, ``--listen-address``,
``--limit-connections``, ``--max-from-ip``, ``--user``, ``--pid-file``,
``--detach``, ``--no-rdns``) plus ``--config-dir``. The parent builds the
application once (configuration and plugins), then ``gc.freeze()``s it so
the children share those pages; for each accepted socket it runs the
``pre-connection`` hook (``hosts_allow``), forks, and the child runs one
SMTP session and leaves through ``os._exit``.

Over ``--limit-connections`` a client gets ``421`` at once instead of
waiting in the kernel's backlog. SIGTERM/SIGINT stop the daemon; SIGHUP
reloads configuration and plugins (a broken configuration keeps the old
one, with a log line). Children are reaped on SIGCHLD.
"""

import argparse
import errno
import gc
import os
import pwd
import grp
import select
import signal
import socket
import sys
import time

from qpsmtpd.app import App
from qpsmtpd.connection import Connection
from qpsmtpd.constants import (
    DENY, DENY_DISCONNECT, DENYSOFT, DENYSOFT_DISCONNECT, LOGCRIT, LOGERROR,
    LOGINFO)
from qpsmtpd.lineio import LineIO
from qpsmtpd.plugin import PluginError
from qpsmtpd.smtp import SMTP
from qpsmtpd.transaction import Transaction


def parse_options(argv):
    parser = argparse.ArgumentParser(
        prog="qpsmtpd-forkserver",
        description="The qpsmtpd SMTP daemon: one forked worker per connection.")
    parser.add_argument("-l", "--listen-address", action="append", default=[],
                        metavar="ADDR[:PORT]", help="address to listen on (repeatable)")
    parser.add_argument("-p", "--port", action="append", type=int, default=[],
                        help="port to listen on (repeatable; default 2525)")
    parser.add_argument("-c", "--limit-connections", type=int, default=15,
                        help="maximum concurrent sessions (default 15)")
    parser.add_argument("-m", "--max-from-ip", type=int, default=5,
                        help="maximum sessions per client IP, enforced by the "
                             "hosts_allow plugin (default 5)")
    parser.add_argument("-u", "--user", help="user to run as after binding")
    parser.add_argument("--pid-file", help="write the daemon's pid here")
    parser.add_argument("-d", "--detach", action="store_true", help="daemonize")
    parser.add_argument("-H", "--no-rdns", action="store_true",
                        help="do not look up the client's host name")
    parser.add_argument("--config-dir", action="append", metavar="DIR",
                        help="configuration directory (searched first)")
    return parser.parse_args(argv)


def listen_addresses(options):
    """[(host, port)] from --listen-address and --port."""
    ports = options.port or [2525]
    addresses = options.listen_address or ["0.0.0.0"]
    result = []
    for text in addresses:
        host, port = text, None
        if text.startswith("["):
            host, _, tail = text[1:].partition("]")
            if tail.startswith(":"):
                port = int(tail[1:])
        elif text.count(":") == 1:
            host, port_text = text.split(":")
            port = int(port_text)
        for p in ([port] if port else ports):
            result.append((host, p))
    return result


def bind(host, port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(socket.SOMAXCONN)
    sock.setblocking(False)
    return sock


class PreConnection:
    """What ``pre-connection`` plugins see as ``session`` in the parent:
    a fresh connection per accepted socket, never shared with the next."""

    def __init__(self, app, connection):
        self.app = app
        self.connection = connection
        self.transaction = Transaction()

    def config(self, name, default=None):
        return self.app.config.get(name, default)


class Server:
    """The parent: listeners, children, signals."""

    def __init__(self, options, app):
        self.options = options
        self.app = app
        self.listeners = []
        self.children = {}  # pid -> remote ip
        self.stopping = False
        self.reload_requested = False

    def log(self, level, message):
        self.app.log(level, message)

    def serve(self):
        # Signal handlers only record; the loop acts. The wakeup pipe makes
        # select() return at once when a signal (SIGCHLD above all) arrives.
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        self.wakeup_fds = (wake_r, wake_w)
        gc.freeze()
        while not self.stopping:
            self.reap()
            if self.reload_requested:
                self.reload()
            try:
                readable, _, _ = select.select(self.listeners + [wake_r], [], [], 1.0)
            except InterruptedError:
                continue
            for ready in readable:
                if ready == wake_r:
                    _drain(wake_r)
                else:
                    self.accept(ready)
        self.shutdown()

    def accept(self, listener):
        try:
            client, peer = listener.accept()
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                self.log(LOGERROR, f"accept: {exc.strerror}; backing off")
                time.sleep(0.1)
            return
        client.setblocking(True)
        local = client.getsockname()
        remote_ip, local_ip = _plain_ip(peer[0]), _plain_ip(local[0])
        if len(self.children) >= self.options.limit_connections:
            self.log(LOGINFO, f"Too many connections: {len(self.children)} >= "
                              f"{self.options.limit_connections}")
            _refuse(client, b"421 Too many concurrent connections, try again later\r\n")
            return
        connection = Connection(remote_ip=remote_ip, remote_port=peer[1],
                                local_ip=local_ip, local_port=local[1])
        if not self.pre_connection(client, connection):
            return
        try:
            pid = os.fork()
        except OSError as exc:
            self.log(LOGCRIT, f"fork failed: {exc.strerror}")
            _refuse(client, b"421 Service temporarily unavailable, try again later\r\n")
            return
        if pid:
            self.children[pid] = remote_ip
            client.close()
            return
        self.child(client, connection)

    def pre_connection(self, client, connection):
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
        _refuse(client, reply.encode("utf-8", "replace") + b"\r\n")
        return False

    def child(self, client, connection):
        status = 0
        try:
            for listener in self.listeners:
                listener.close()
            signal.set_wakeup_fd(-1)
            for fd in self.wakeup_fds:
                os.close(fd)
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
                signal.signal(signum, signal.SIG_DFL)
            if not self.options.no_rdns:
                connection.remote_host = connection.remote_info = \
                    _reverse_name(connection.remote_ip)
            os.environ["TCPREMOTEIP"] = connection.remote_ip
            os.environ["TCPREMOTEHOST"] = connection.remote_host
            os.environ["TCPLOCALIP"] = connection.local_ip
            _set_title(f"qpsmtpd-forkserver [{connection.remote_ip} : "
                       f"{connection.remote_host} : "
                       f"{time.strftime('%H:%M:%S %Y-%m-%d')}]")
            self.log(LOGINFO, f"Accepted connection {len(self.children)}/"
                              f"{self.options.limit_connections} from "
                              f"{connection.remote_ip} / {connection.remote_host}")
            io = LineIO(client)
            SMTP(self.app, io, connection).run()
            io.close()
        except BaseException as exc:  # the child must never return to the loop
            status = 1
            try:
                self.log(LOGCRIT, f"worker failed: {exc!r}")
            except BaseException:
                pass
        finally:
            os._exit(status)

    def reap(self):
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            self.children.pop(pid, None)
            if os.WIFSIGNALED(status):
                self.log(LOGERROR, f"worker {pid} killed by signal "
                                   f"{os.WTERMSIG(status)}")
            else:
                self.log(LOGINFO, f"cleaning up after {pid}")

    def reload(self):
        self.reload_requested = False
        try:
            app = App(self.app.config.dirs).load_plugins()
        except (PluginError, OSError) as exc:
            self.log(LOGERROR, f"reload failed, keeping the running configuration: {exc}")
            return
        gc.unfreeze()
        self.app = app
        gc.freeze()
        self.log(LOGINFO, "configuration and plugins reloaded")

    def shutdown(self):
        for listener in self.listeners:
            listener.close()
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if self.options.pid_file:
            try:
                os.unlink(self.options.pid_file)
            except OSError:
                pass

    def _on_stop(self, signum, frame):
        self.stopping = True

    def _on_hup(self, signum, frame):
        self.reload_requested = True


def _drain(fd):
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _refuse(client, reply):
    try:
        client.sendall(reply)
    except OSError:
        pass
    client.close()


def _plain_ip(ip):
    return ip[7:] if ip.startswith("::ffff:") and "." in ip else ip


def _reverse_name(ip):
    try:
        return socket.gethostbyaddr(ip)[0]
    except OSError:
        return "Unknown"


def _set_title(title):
    try:
        import setproctitle
        setproctitle.setproctitle(title)
    except ImportError:
        pass


def drop_privileges(user):
    entry = pwd.getpwnam(user)
    groups = [entry.pw_gid] + [g.gr_gid for g in grp.getgrall() if user in g.gr_mem]
    os.setgroups(groups)
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)


def main(argv=None):
    options = parse_options(argv)
    config_dirs = None
    if options.config_dir:
        from qpsmtpd.config import DEFAULT_DIRS
        config_dirs = [os.path.abspath(d) for d in options.config_dir] + list(DEFAULT_DIRS)
    try:
        app = App(config_dirs).load_plugins()
    except (PluginError, OSError) as exc:
        sys.stderr.write(f"qpsmtpd-forkserver: cannot load plugins: {exc}\n")
        return 1
    server = Server(options, app)
    for host, port in listen_addresses(options):
        try:
            server.listeners.append(bind(host, port))
        except OSError as exc:
            sys.stderr.write(f"Creating TCP socket {host}:{port}: {exc.strerror}\n")
            return 1
        app.log(LOGINFO, f"Listening on {host}:{port}")
    if options.user and os.getuid() == 0:
        drop_privileges(options.user)
    if options.pid_file:
        with open(options.pid_file, "w") as pid_file:
            pid_file.write(f"{os.getpid()}\n")
    try:
        app.spool_dir()
    except OSError as exc:
        sys.stderr.write(f"qpsmtpd-forkserver: {exc}\n")
        return 1
    server.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
