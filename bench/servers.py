"""The SMTP servers the benchmark drives, each in its own directory.

Every server listens on 127.0.0.1 on a free port, logs to ``<dir>/log``
and is started in a session of its own, so ``stop()`` ends it and every
process it forked, and nothing else.

* ``Ours`` — ``qpsmtpd_forkserver.py`` of this tree, configuration: the
  sample ``config/`` with the benchmark's plugin list;
* ``OursTcpserver`` — the per-connection program ``qpsmtpd`` under
  tcpserver (ucspi-tcp), same configuration (W6);
* ``Qpsmtpd094`` — Debian's qpsmtpd 0.94 forkserver, started through
  ``qpsmtpd-0.94-forkserver.pl`` (which only points Net::DNS at the
  benchmark's DNS server), same configuration files and the same plugin
  list with qpsmtpd's own plugins;
* ``Qpsmtpd094Tcpserver`` — qpsmtpd 0.94's per-connection server under
  tcpserver (``qpsmtpd-0.94-session.pl``; W6 reference);
* ``SmtpSink`` — Postfix's smtp-sink: accepts and discards, no disk, no
  policy: the ceiling of the protocol on this machine.

As root, qpsmtpd 0.94 and smtp-sink run as an unprivileged user (they
insist); ours runs as the invoking user. The uid makes no difference to
speed.
"""

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time

import procinfo

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.environ.get("BENCH_ROOT") or os.path.dirname(BENCH_DIR)
SAMPLE_CONFIG = os.path.join(ROOT, "config")
QPSMTPD094_PLUGIN_DIR = "/usr/share/qpsmtpd/plugins"
QPSMTPD094_FORKSERVER = "/usr/bin/qpsmtpd-forkserver"
START_TIMEOUT = 30


class ServerError(RuntimeError):
    """A server could not be started; the message carries its log's tail."""


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_program(name):
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")


def unprivileged_user():
    """(uid, gid, name) to run the references as when we are root, else None."""
    if os.getuid() != 0:
        return None
    for name in ("qpsmtpd", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid, name
    return None


def chown_tree(path, uid, gid):
    for directory, dirs, files in os.walk(path):
        os.chown(directory, uid, gid)
        for name in files:
            os.chown(os.path.join(directory, name), uid, gid)


def write_config(config_dir, plugin_lines, settings):
    """The sample configuration with the benchmark's plugins and settings.

    ``settings`` maps file names to their content (a string or a list of
    lines); None removes the file.
    """
    os.makedirs(config_dir, exist_ok=True)
    for name in os.listdir(SAMPLE_CONFIG):
        source = os.path.join(SAMPLE_CONFIG, name)
        if os.path.isfile(source):
            shutil.copyfile(source, os.path.join(config_dir, name))
    settings = dict(settings)
    settings["plugins"] = list(plugin_lines)
    for name, value in settings.items():
        path = os.path.join(config_dir, name)
        if value is None:
            if os.path.exists(path):
                os.unlink(path)
            continue
        if not isinstance(value, str):
            value = "\n".join(value)
        with open(path, "w") as handle:
            handle.write(value + "\n")


class Server:
    """One server process tree; subclasses say how to start it."""

    key = "server"
    label = "server"
    has_maildir = True
    single_process = False   # one process serves every connection

    def __init__(self, workdir, dns_port=None, loglevel=None):
        self.dir = os.path.join(workdir, self.key)
        self.dns_port = dns_port
        self.loglevel = loglevel
        self.port = free_port()
        self.process = None
        self.maildir = os.path.join(self.dir, "maildir")
        os.makedirs(self.dir, exist_ok=True)

    # -- subclass interface ------------------------------------------------------

    def prepare(self):
        """Write configuration; returns (argv, env, cwd)."""
        raise NotImplementedError

    # -- life cycle ----------------------------------------------------------------

    def start(self):
        argv, env, cwd = self.prepare()
        self.log_path = os.path.join(self.dir, "log")
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self):
        deadline = time.monotonic() + START_TIMEOUT
        problem = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"{self.label} exited with status "
                                  f"{self.process.returncode}:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                    banner = _read_reply(sock)
                    if banner.startswith(b"220"):
                        sock.sendall(b"QUIT\r\n")
                        _read_reply(sock)
                        return
                    problem = f"banner {banner[:200]!r}"
            except OSError as exc:
                problem = str(exc)
            time.sleep(0.1)
        raise ServerError(f"{self.label} not ready after {START_TIMEOUT} s "
                          f"({problem}):\n{self.log_tail()}")

    def stop(self):
        """SIGTERM, then SIGKILL to whatever is left of the server's session
        (its workers included); safe to call twice."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def log_tail(self, lines=30):
        try:
            with open(self.log_path, "rb") as handle:
                text = handle.read()[-20000:].decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- what the workloads read -------------------------------------------------

    @property
    def pid(self):
        return self.process.pid

    def workers(self):
        """Pids of the processes serving connections right now."""
        return procinfo.children(self.pid)

    def cpu_seconds(self):
        """CPU time of the server and of its workers so far: the finished
        ones (the parent's account of reaped children) and the live ones
        (reused workers and spares)."""
        live = [procinfo.cpu_seconds(pid) for pid in procinfo.children(self.pid)]
        return procinfo.cpu_seconds(self.pid) + sum(t for t in live if t is not None)

    def delivered(self):
        """Messages in the maildir's new/ (None when the server keeps none)."""
        if not self.has_maildir:
            return None
        try:
            return len(os.listdir(os.path.join(self.maildir, "new")))
        except FileNotFoundError:
            return 0

    def clear_maildir(self):
        """Start new/ afresh between workloads so the directory stays small.

        The old new/ is renamed aside, not emptied: deleting thousands of
        files makes ext4 slow to allocate inodes in that block group for
        minutes afterwards (it skips recently deleted inodes one by one,
        ``recently_deleted()``), which doubled the kernel time per message
        of whichever server wrote there next. The working directory is
        removed at the end of the run."""
        if not self.has_maildir:
            return
        new = os.path.join(self.maildir, "new")
        try:
            status = os.stat(new)
        except FileNotFoundError:
            return
        self._cleared = getattr(self, "_cleared", 0) + 1
        os.rename(new, os.path.join(self.maildir, f"old.{self._cleared}"))
        os.mkdir(new, status.st_mode & 0o7777)
        os.chmod(new, status.st_mode & 0o7777)
        if os.geteuid() == 0:
            os.chown(new, status.st_uid, status.st_gid)


class Ours(Server):
    key = "ours"
    label = "ours (forkserver)"

    def __init__(self, workdir, plugin_lines, dns_port=None, loglevel=None,
                 python=None, extra_args=()):
        super().__init__(workdir, dns_port, loglevel)
        self.plugin_lines = [line.format(dir=self.dir) for line in plugin_lines]
        self.python = python or sys.executable
        self.extra_args = list(extra_args)
        self.config_dir = os.path.join(self.dir, "config")

    def settings(self):
        settings = {
            "spool_dir": os.path.join(self.dir, "spool"),
            "relayclients": "# inbound mail: nobody relays",
            "dnsbl_zones": "zen.bench.test",
        }
        if self.dns_port:
            settings["dns_servers"] = f"127.0.0.1:{self.dns_port}"
        if self.loglevel is not None:
            settings["loglevel"] = str(self.loglevel)
        return settings

    def workers(self):
        """Pids of the workers in a session: their process title names the
        client (spares and workers between sessions read ``qpsmtpd: spare``;
        a tree without reused workers has only the former)."""
        return [pid for pid in procinfo.children(self.pid)
                if procinfo.title(pid) not in (None, "qpsmtpd: spare")]

    def prepare(self):
        write_config(self.config_dir, self.plugin_lines, self.settings())
        os.makedirs(os.path.join(self.dir, "karma"), exist_ok=True)
        argv = [self.python, os.path.join(ROOT, "qpsmtpd_forkserver.py"),
                "--listen-address", "127.0.0.1", "--port", str(self.port),
                "--config-dir", self.config_dir,
                "--limit-connections", "500", "--max-from-ip", "500",
                *self.extra_args]
        return argv, _env_with_root(), self.dir


class OursTcpserver(Ours):
    key = "ours-tcpserver"
    label = "ours (qpsmtpd under tcpserver)"

    def prepare(self):
        write_config(self.config_dir, self.plugin_lines, self.settings())
        os.makedirs(os.path.join(self.dir, "karma"), exist_ok=True)
        argv = [find_program("tcpserver") or "tcpserver", "-q", "-R", "-H",
                "-l", "localhost", "-c", "500", "127.0.0.1", str(self.port),
                *per_connection_command(self.python), "--config-dir", self.config_dir]
        return argv, _env_with_root(), self.dir


def per_connection_command(python):
    """The per-connection program as an installation runs it: the console
    script next to ``python`` when there is one (a virtualenv), else
    ``python -m qpsmtpd``."""
    script = os.path.join(os.path.dirname(python), "qpsmtpd")
    if os.access(script, os.X_OK):
        return [script]
    return [python, "-m", "qpsmtpd"]


class Qpsmtpd094(Server):
    key = "qpsmtpd"
    label = "qpsmtpd 0.94 (Debian, forkserver)"
    wrapper = "qpsmtpd-0.94-forkserver.pl"

    def __init__(self, workdir, plugin_lines, dns_port=None, loglevel=None):
        super().__init__(workdir, dns_port, loglevel)
        self.plugin_lines = [line.format(dir=self.dir) for line in plugin_lines]
        self.config_dir = os.path.join(self.dir, "config")
        self.user = unprivileged_user()

    def prepare(self):
        settings = {
            "plugin_dirs": QPSMTPD094_PLUGIN_DIR,
            "spool_dir": os.path.join(self.dir, "spool"),
            "relayclients": "# inbound mail: nobody relays",
            "dnsbl_zones": "zen.bench.test",
            "logging": "# no logging plugins: built-in logging to stderr",
        }
        if self.loglevel is not None:
            settings["loglevel"] = str(self.loglevel)
        write_config(self.config_dir, self.plugin_lines, settings)
        for sub in ("spool", "karma"):
            os.makedirs(os.path.join(self.dir, sub), mode=0o700, exist_ok=True)
        resolv_conf = os.path.join(self.dir, "resolv.conf")
        with open(resolv_conf, "w") as handle:
            if self.dns_port:
                handle.write(f"nameserver 127.0.0.1\noptions port:{self.dns_port}\n")
            else:
                with open("/etc/resolv.conf") as system:
                    handle.write(system.read())
        os.chmod(self.dir, 0o755)
        if self.user:
            chown_tree(self.dir, self.user[0], self.user[1])
        env = dict(os.environ, QPSMTPD_CONFIG=self.config_dir,
                   BENCH_RESOLV_CONF=resolv_conf)
        return self.argv(), env, self.dir

    def argv(self):
        argv = ["perl", "-T", os.path.join(BENCH_DIR, self.wrapper),
                "--listen-address", "127.0.0.1", "--port", str(self.port),
                "--limit-connections", "500", "--max-from-ip", "500"]
        if self.user:
            argv += ["--user", self.user[2]]
        return argv


class Qpsmtpd094Tcpserver(Qpsmtpd094):
    key = "qpsmtpd-tcpserver"
    label = "qpsmtpd 0.94 (per-connection, under tcpserver)"
    wrapper = "qpsmtpd-0.94-session.pl"

    def argv(self):
        argv = [find_program("tcpserver") or "tcpserver", "-q", "-R", "-H",
                "-l", "localhost", "-c", "500"]
        if self.user:
            argv += ["-u", str(self.user[0]), "-g", str(self.user[1])]
        return argv + ["127.0.0.1", str(self.port),
                       "perl", "-T", os.path.join(BENCH_DIR, self.wrapper)]


class SmtpSink(Server):
    key = "sink"
    label = "Postfix smtp-sink"
    has_maildir = False
    single_process = True

    def prepare(self):
        argv = [find_program("smtp-sink") or "smtp-sink"]
        user = unprivileged_user()
        if user:
            argv += ["-u", user[2]]
        argv += [f"127.0.0.1:{self.port}", "1024"]
        return argv, dict(os.environ), self.dir


def references_available():
    """Which optional programs are installed: {name: path or None}."""
    return {
        "qpsmtpd 0.94": QPSMTPD094_FORKSERVER if os.path.exists(QPSMTPD094_FORKSERVER)
        else None,
        "smtp-sink": find_program("smtp-sink"),
        "smtp-source": find_program("smtp-source"),
        "tcpserver": find_program("tcpserver"),
    }


def _env_with_root():
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = ROOT + (os.pathsep + path if path else "")
    return env


def _read_reply(sock):
    """Read one (multi-line) reply; returns its bytes."""
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
        lines = data.split(b"\r\n")
        for line in lines[:-1]:
            if len(line) < 4 or line[3:4] != b"-":
                return data
