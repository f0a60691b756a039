"""qpsmtpd-forkserver: the SMTP daemon, one forked worker per session.

Usage: qpsmtpd-forkserver [options]

  -l, --listen-address ADDR[:PORT]  address to listen on, repeatable:
                                    192.0.2.1, 192.0.2.1:25, [2001:db8::1]:25,
                                    2001:db8::1, mx.example.org:587;
                                    default [::] (v4 and v6), else 0.0.0.0
  -p, --port PORT            port for addresses without one, repeatable
                             (default 2525; 0 lets the kernel choose)
  -c, --limit-connections N  concurrent sessions (default 15); over it the
                             client gets 421 at once
  -m, --max-from-ip M        sessions per client IP (default 5, 0: none);
                             over it the client gets 421
  -u, --user NAME            bind as root, then run as NAME with its groups
      --pid-file PATH        write the daemon's pid here; refuse to start
                             while a running qpsmtpd holds it
  -d, --detach               become a background daemon (stdin, stdout and
                             stderr on /dev/null: log through a logging
                             plugin); returns once it serves
  -H, --no-rdns              no reverse DNS: the client is [ip]
      --config-dir DIR       configuration directory, searched first
                             (repeatable)
      --listen-fd FD         serve an inherited listening socket (repeatable);
                             systemd's LISTEN_FDS/LISTEN_PID are honoured too
      --grace-period SECONDS how long a stop waits for running sessions
                             (default 30)
      --max-requests N       sessions a worker serves, one after another,
                             before it exits (default 1000; 1: a fresh
                             process for every connection)
      --idle-children N      spare workers kept forked ahead (default 2;
                             0: fork when a client arrives)
  -h, --help

Start-up, in this order: the pid file is checked; sockets are bound (or
taken from systemd/--listen-fd); privileges are dropped; configuration and
plugins are loaded (as that user) and ``spool_dir`` prepared; with
``--detach`` the process detaches and the command returns when the daemon
serves (status 1 and the reason on stderr when it could not start); the pid
is written; the accept loop runs (``qpsmtpd.forkserver.Server``). Anything
that cannot work stops the start with status 1 and a line on stderr, e.g.
``Creating TCP socket 192.0.2.1:25: Address already in use`` or ``Found an
already running qpsmtpd with pid 4242.``

Signals (to the parent): SIGHUP reloads configuration and plugins, keeping
the listening sockets and the running sessions (a broken configuration
keeps the running one: ``reload failed, keeping the running configuration:
...``); SIGTERM/SIGINT stop accepting and let sessions finish for the grace
period; a second SIGTERM/SIGINT ends them at once. Under systemd
(``Type=notify``) READY, RELOADING and STOPPING are reported.
"""

import argparse
import gc
import grp
import ipaddress
import os
import pwd
import re
import socket
import sys

from qpsmtpd.app import App, warm_imports
from qpsmtpd.constants import LOGINFO, LOGWARN
from qpsmtpd.forkserver import (
    DEFAULT_GRACE_PERIOD, DEFAULT_IDLE_CHILDREN, DEFAULT_MAX_REQUESTS, Server,
    SystemdNotify)
# Plugin tests build the parent's pre-connection session from here.
from qpsmtpd.forkserver import PreConnection  # noqa: F401

DEFAULT_PORT = 2525
_ADDRESS = re.compile(r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[\w.-]+))(?::(?P<port>\d+))?\Z")


class StartupError(Exception):
    """The daemon cannot start; the message is for the admin."""


# -- options ------------------------------------------------------------------------

def parse_options(argv=None):
    parser = argparse.ArgumentParser(
        prog="qpsmtpd-forkserver",
        description="The qpsmtpd SMTP daemon: one forked worker per session.")
    parser.add_argument("-l", "--listen-address", action="append", default=[],
                        type=listen_address, metavar="ADDR[:PORT]",
                        help="address to listen on, repeatable: 192.0.2.1, "
                             "192.0.2.1:25, [2001:db8::1]:25, host:port "
                             "(default [::], else 0.0.0.0)")
    parser.add_argument("-p", "--port", action="append", default=[], type=port_number,
                        help=f"port for addresses without one, repeatable "
                             f"(default {DEFAULT_PORT})")
    parser.add_argument("-c", "--limit-connections", type=positive_int, default=15,
                        metavar="N", help="concurrent sessions; over it: 421 (default 15)")
    parser.add_argument("-m", "--max-from-ip", type=non_negative_int, default=5,
                        metavar="M", help="sessions per client IP, 0 for no limit; "
                                          "over it: 421 (default 5)")
    parser.add_argument("-u", "--user", type=user_name,
                        help="user to run as after binding (with its groups)")
    parser.add_argument("--pid-file", metavar="PATH",
                        help="write the daemon's pid here; refuse to start while "
                             "a running qpsmtpd holds it")
    parser.add_argument("-d", "--detach", action="store_true",
                        help="run in the background (stdio on /dev/null: log "
                             "through a logging plugin)")
    parser.add_argument("-H", "--no-rdns", action="store_true",
                        help="do not look up the client's host name")
    parser.add_argument("--config-dir", action="append", metavar="DIR",
                        help="configuration directory (repeatable; searched first)")
    parser.add_argument("--listen-fd", action="append", default=[], type=non_negative_int,
                        metavar="FD", help="serve this inherited listening socket "
                                           "(repeatable; systemd's LISTEN_FDS also works)")
    parser.add_argument("--grace-period", type=seconds, default=DEFAULT_GRACE_PERIOD,
                        metavar="SECONDS", help="how long SIGTERM waits for running "
                                                "sessions (default 30)")
    parser.add_argument("--max-requests", type=positive_int, default=DEFAULT_MAX_REQUESTS,
                        metavar="N", help="sessions a worker serves before it exits "
                                          f"(default {DEFAULT_MAX_REQUESTS}; 1: a fresh "
                                          "process per connection)")
    parser.add_argument("--idle-children", type=non_negative_int,
                        default=DEFAULT_IDLE_CHILDREN, metavar="N",
                        help="spare workers kept forked ahead "
                             f"(default {DEFAULT_IDLE_CHILDREN})")
    return parser.parse_args(argv)


def listen_address(text):
    """``ADDR[:PORT]`` → (host, port or None); IPv6 bare or in brackets."""
    try:
        ipaddress.IPv6Address(text)
        return text, None
    except ValueError:
        pass
    match = _ADDRESS.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not an address[:port]: {text!r}")
    host = match["v6"] or match["host"]
    if match["v6"]:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an IPv6 address: {host!r}") from None
    return host, (port_number(match["port"]) if match["port"] else None)


def port_number(text):
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}")
    return int(text)


def positive_int(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive number: {text!r}")
    return int(text)


def non_negative_int(text):
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a number: {text!r}")
    return int(text)


def seconds(text):
    try:
        value = float(text)
    except ValueError:
        value = -1
    if not 0 <= value < 1e6:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}")
    return value


def user_name(text):
    if not re.fullmatch(r"[\w.-]+", text):
        raise argparse.ArgumentTypeError(f"not a user name: {text!r}")
    return text


# -- listening sockets --------------------------------------------------------------------

def listen_addresses(options):
    """[(host, port)] for the --listen-address options: an address with its
    own port listens there, the others on every --port (default 2525)."""
    ports = options.port or [DEFAULT_PORT]
    result = []
    for host, port in options.listen_address:
        for p in ([port] if port is not None else ports):
            if (host, p) not in result:
                result.append((host, p))
    return result


def bind_listeners(addresses):
    """Bind and listen on every (host, port); a host name binds each of its
    addresses. Raises StartupError with qpsmtpd's text."""
    wildcard_v4_ports = {port for host, port in addresses if host == "0.0.0.0"}
    sockets = []
    try:
        for host, port in addresses:
            try:
                infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC,
                                           socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
            except socket.gaierror as exc:
                raise StartupError(f"Creating TCP socket {_show(host, port)}: "
                                   f"{exc.strerror}") from None
            seen = set()
            for family, kind, proto, _, sockaddr in infos:
                if sockaddr[:2] in seen:
                    continue
                seen.add(sockaddr[:2])
                dual_stack = (family == socket.AF_INET6 and host == "::"
                              and port not in wildcard_v4_ports)
                try:
                    sockets.append(_listen(family, sockaddr, dual_stack))
                except OSError as exc:
                    raise StartupError(f"Creating TCP socket {_show(host, port)}: "
                                       f"{exc.strerror}") from None
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def bind_default(ports):
    """``[::]`` (IPv4 too) on each port, or 0.0.0.0 where IPv6 is missing."""
    try:
        return bind_listeners([("::", port) for port in ports])
    except StartupError:
        if socket.has_ipv6 and _ipv6_works():
            raise
        return bind_listeners([("0.0.0.0", port) for port in ports])


def _ipv6_works():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


def _listen(family, sockaddr, dual_stack):
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)
        sock.bind(sockaddr)
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def inherited_listeners(listen_fds, environ=os.environ):
    """Sockets handed over by systemd (``LISTEN_FDS`` from fd 3, for this pid)
    and by ``--listen-fd``: [(socket, how it came)]. The systemd variables
    are removed so no worker or plugin takes them for its own."""
    found = [(fd, f"fd {fd}") for fd in listen_fds]
    if environ.get("LISTEN_PID") == str(os.getpid()):
        count = environ.get("LISTEN_FDS", "")
        if not count.isdigit():
            raise StartupError(f"LISTEN_FDS is not a number: {count!r}")
        found += [(fd, f"fd {fd} from systemd") for fd in range(3, 3 + int(count))]
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        environ.pop(name, None)
    sockets = []
    for fd, how in found:
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise StartupError(f"{how} is not a socket: {exc.strerror}") from None
        if sock.family not in (socket.AF_INET, socket.AF_INET6) \
                or sock.type != socket.SOCK_STREAM \
                or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            sock.detach()
            raise StartupError(f"{how} is not a listening TCP socket "
                               "(a systemd .socket unit needs Accept=no)")
        sock.setblocking(False)
        sock.set_inheritable(False)
        sockets.append((sock, how))
    return sockets


def show_address(sock):
    return _show(*sock.getsockname()[:2])


def _show(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- pid file ----------------------------------------------------------------------------

class PidFile:
    """The pid file: checked and opened before privileges are dropped,
    written once the daemon serves, removed (or emptied, when the dropped
    user may not remove it) when it stops."""

    def __init__(self, path):
        self.path = os.path.abspath(path)
        self.fd = None
        self.stale_pid = None

    def claim(self):
        """Refuse while a running qpsmtpd holds the file; else open it."""
        pid = self.read_pid()
        if pid and pid != os.getpid() and _is_running_qpsmtpd(pid):
            raise StartupError(f"Found an already running qpsmtpd with pid {pid}.")
        self.stale_pid = pid
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            os.ftruncate(self.fd, 0)
        except OSError as exc:
            raise StartupError(f"cannot open the pid file {self.path}: "
                               f"{exc.strerror}") from None

    def read_pid(self):
        try:
            with open(self.path) as handle:
                text = handle.read(64).strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StartupError(f"cannot read the pid file {self.path}: "
                               f"{exc.strerror}") from None
        return int(text) if text.isdigit() else 0

    def write(self, pid):
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, b"%d\n" % pid, 0)

    def remove(self):
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            try:
                os.ftruncate(self.fd, 0)    # an empty pid file is a stale one
            except OSError:
                pass
        self.close()

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _is_running_qpsmtpd(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            command = handle.read()
    except OSError:
        return True             # no /proc: a live pid is all we know
    return b"qpsmtpd" in command  # else the pid was reused (or a zombie)


# -- privileges and detaching ---------------------------------------------------------------

def drop_privileges(user):
    """Become ``user`` with its primary group and every group listing it.
    Returns the passwd entry; raises StartupError with qpsmtpd's texts."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise StartupError(f"unable to determine uid/gid for {user}") from None
    if os.geteuid() != 0 and entry.pw_uid == os.geteuid():
        return entry
    try:
        os.setgroups(os.getgrouplist(user, entry.pw_gid))
        os.setgid(entry.pw_gid)
    except OSError as exc:
        raise StartupError(f"unable to change gid: {exc.strerror}") from None
    try:
        os.setuid(entry.pw_uid)
    except OSError as exc:
        raise StartupError(f"unable to change uid: {exc.strerror}") from None
    # ~/tmp is the default spool_dir: it must be the new user's home
    os.environ.update(HOME=entry.pw_dir, USER=user, LOGNAME=user)
    return entry


def running_as():
    """qpsmtpd's start-up line: ``Running as user <name>, group <names>``."""
    user = _name(pwd.getpwuid, os.geteuid(), "pw_name")
    gids = [os.getegid()] + [g for g in os.getgroups() if g != os.getegid()]
    groups = " ".join(_name(grp.getgrgid, gid, "gr_name") for gid in gids)
    return f"Running as user {user}, group {groups}"


def _name(lookup, number, field):
    try:
        return getattr(lookup(number), field)
    except KeyError:
        return str(number)


class Readiness:
    """How a detached daemon tells the command that started it how the
    start went: "ready", or the reason it failed."""

    def __init__(self, fd):
        self.fd = fd

    def tell(self, message):
        if self.fd is None:
            return
        try:
            os.write(self.fd, message.encode("utf-8", "replace"))
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def open_fds():
    """The file descriptors above stderr this process has open."""
    try:
        listed = {int(fd) for fd in os.listdir("/proc/self/fd")} - {0, 1, 2}
    except OSError:
        return set()
    return {fd for fd in listed if _is_open(fd)}   # not the listing's own


def _is_open(fd):
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def detach(keep_fds):
    """Become a daemon with python-daemon's DaemonContext (double fork,
    setsid, stdio on /dev/null, no core files). The working directory, the
    umask and ``keep_fds`` (sockets, pid file, plugins' files) are kept;
    other inherited descriptors are closed.

    The starting process waits until the daemon reports and exits with 0
    (it serves) or 1 (the reason goes to stderr), so a ``--detach`` start
    followed by ``kill $(cat pidfile)`` cannot race. Returns the daemon's
    ``Readiness``.
    """
    import daemon

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_end)
        report = b""
        while chunk := os.read(read_end, 4096):
            report += chunk
        os.waitpid(pid, 0)
        if report != b"ready":
            sys.stderr.write(f"qpsmtpd-forkserver: "
                             f"{report.decode('utf-8', 'replace') or 'the daemon died'}\n")
        sys.stderr.flush()
        os._exit(0 if report == b"ready" else 1)
    os.close(read_end)
    umask = os.umask(0)
    os.umask(umask)
    context = daemon.DaemonContext(
        working_directory=os.getcwd(), umask=umask, detach_process=True,
        files_preserve=sorted(set(keep_fds) | {write_end}), signal_map={})
    context.open()
    return Readiness(write_end)


# -- main -----------------------------------------------------------------------------------

def main(argv=None):
    inherited_fds = open_fds()
    options = parse_options(argv)
    os.environ.pop("ENV", None)
    try:
        sys.stderr.reconfigure(line_buffering=True)
    except (AttributeError, ValueError):
        pass
    try:
        return start(options, inherited_fds)
    except StartupError as exc:
        sys.stderr.write(f"qpsmtpd-forkserver: {exc}\n")
        return 1


def start(options, inherited_fds=frozenset()):
    """Set up (see the module's manual) and serve; returns the exit status.
    ``inherited_fds`` were open when the program started: a detached daemon
    closes those it does not use."""
    config_dirs = None
    if options.config_dir:
        from qpsmtpd.config import DEFAULT_DIRS
        config_dirs = [os.path.abspath(d) for d in options.config_dir] + list(DEFAULT_DIRS)
    pid_file = PidFile(options.pid_file) if options.pid_file else None
    if pid_file:
        pid_file.claim()
    listeners = []
    try:
        listeners = inherited_listeners(options.listen_fd)
        if options.listen_address:
            bound = bind_listeners(listen_addresses(options))
        elif options.port or not listeners:
            bound = bind_default(options.port or [DEFAULT_PORT])
        else:
            bound = []
        listeners += [(sock, None) for sock in bound]
        if options.user:
            # What sessions import at first use, imported while every file
            # of the installation is still readable.
            warm_imports()
            drop_privileges(options.user)
        gc.disable()    # no collections while the shared heap is built
        app = build_app(config_dirs)
    except BaseException:
        for sock, _ in listeners:
            sock.close()
        if pid_file:
            pid_file.remove()
        raise

    for sock, how in listeners:
        app.log(LOGINFO, f"Listening on {show_address(sock)}" + (f" ({how})" if how else ""))
    app.log(LOGINFO, running_as())
    if os.geteuid() == 0:
        app.log(LOGWARN, "running as root: name an unprivileged user with --user")
    if pid_file and pid_file.stale_pid is not None:
        app.log(LOGINFO, f"removed a stale pid file (pid {pid_file.stale_pid or '?'} "
                         "is not a running qpsmtpd)")
    for name in ("RELAYCLIENT", "WHITELISTCLIENT"):
        if name in os.environ:
            app.log(LOGWARN, f"{name} is set in the environment: it applies to "
                             "every client")

    server = Server(options, app, build_app=lambda: build_app(app.config.dirs))
    server.listeners = [sock for sock, _ in listeners]
    server.pid_file = pid_file
    server.notify = SystemdNotify.from_environment()
    readiness = None
    if options.detach:
        if not app.dispatcher.has_hook("logging"):
            sys.stderr.write("qpsmtpd-forkserver: detaching: the log goes to /dev/null "
                             "unless config/logging names a logging plugin\n")
        keep = (open_fds() - set(inherited_fds)) | {sock.fileno() for sock in server.listeners}
        readiness = detach(keep)
    server.install_signals()
    server.prepare()
    try:
        if pid_file:
            pid_file.write(os.getpid())
    except OSError as exc:
        if readiness:
            readiness.tell(f"cannot write the pid file: {exc.strerror}")
        raise StartupError(f"cannot write the pid file: {exc.strerror}") from None
    if readiness:
        readiness.tell("ready")
    return server.serve()


def build_app(config_dirs):
    """Configuration and plugins, with ``spool_dir`` ready; StartupError
    when they cannot be loaded."""
    try:
        app = App(config_dirs).load_plugins()
    except Exception as exc:
        raise StartupError(f"cannot load plugins: {exc}") from None
    try:
        app.spool_dir()
    except OSError as exc:
        raise StartupError(str(exc)) from None
    return app


if __name__ == "__main__":
    sys.exit(main())
