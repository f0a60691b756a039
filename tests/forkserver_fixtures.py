"""Helpers for the tests that run the real qpsmtpd-forkserver.

``Daemon`` starts ``qpsmtpd_forkserver.py`` on a loopback port with a config
directory of its own (``site``) and the maildir queue, logs to a file, and
knows the daemon's children. ``SMTPClient`` speaks raw SMTP lines, so the
tests see the exact reply lines (``smtplib`` would hide a 421).
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time

from conftest import ROOT, write_config

SCRIPT = os.path.join(ROOT, "qpsmtpd_forkserver.py")
PLUGIN_DIR = os.path.join(ROOT, "plugins")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout=10.0, interval=0.02):
    """Poll ``predicate`` until it is true; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def wait_for_port(port, proc, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.recv(1024)
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("server did not start listening")


def site(directory, plugins, extra=None, plugin_dirs=None):
    """A config directory for a daemon; returns (config_dir, maildir)."""
    directory = str(directory)
    maildir = os.path.join(directory, "maildir")
    files = {"me": "mx.example.org", "rcpthosts": "example.test",
             "spool_dir": os.path.join(directory, "spool") + "/", "loglevel": "6",
             "plugins": list(plugins) + [f"queue/maildir {maildir}"]}
    if plugin_dirs:
        files["plugin_dirs"] = [str(d) for d in plugin_dirs] + [PLUGIN_DIR]
    files.update(extra or {})
    config_dir = os.path.join(directory, "config")
    write_config(config_dir, files)
    return config_dir, maildir


def env():
    return dict(os.environ, PYTHONPATH=ROOT)


class Daemon:
    """qpsmtpd-forkserver on 127.0.0.1:<port>, stderr to ``daemon.log``."""

    def __init__(self, directory, plugins=("relay", "rcpt_ok"), config=None, args=(),
                 plugin_dirs=None, listen=True, wrapper=(), python=sys.executable,
                 pass_fds=(), extra_env=None, preexec_fn=None):
        self.directory = str(directory)
        self.config_dir, self.maildir = site(directory, plugins, config, plugin_dirs)
        self.port = free_port()
        self.log_path = os.path.join(self.directory, "daemon.log")
        self.pid_file = os.path.join(self.directory, "qpsmtpd.pid")
        argv = [*wrapper, python, SCRIPT]
        if listen:
            argv += ["--listen-address", "127.0.0.1", "--port", str(self.port)]
        argv += ["--config-dir", self.config_dir, "--pid-file", self.pid_file, *args]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv, cwd=self.directory, stderr=log,
                env=dict(env(), **(extra_env or {})), pass_fds=pass_fds,
                preexec_fn=preexec_fn)
        self.pid = self.proc.pid
        if not wait_for(lambda: self._serving() or self.proc.poll() is not None,
                        timeout=20):
            raise AssertionError("the daemon did not start:\n" + self.log())
        if self.proc.poll() is not None:
            raise AssertionError(f"the daemon exited with {self.proc.returncode}:\n"
                                 + self.log())

    def _serving(self):
        """Started: the pid is written, the last step before the accept
        loop (whatever config/loglevel lets into the log)."""
        try:
            with open(self.pid_file) as handle:
                return handle.read() == f"{self.pid}\n"
        except FileNotFoundError:
            return False

    def log(self):
        with open(self.log_path, errors="replace") as handle:
            return handle.read()

    def wait_log(self, fragment, timeout=10, count=1):
        assert wait_for(lambda: self.log().count(fragment) >= count, timeout), \
            f"{fragment!r} not logged ({count}x):\n{self.log()[-3000:]}"

    def connect(self, source="127.0.0.1", greeting=True):
        client = SMTPClient(("127.0.0.1", self.port), source)
        if greeting:
            client.greeting = client.reply()
        return client

    def children(self):
        """The workers in a session (spares and workers between two
        sessions left out)."""
        return session_workers(self.pid)

    def processes(self):
        """Every child: workers in a session, spares, idle workers."""
        return children_of(self.pid)

    def wait_children(self, count, timeout=10):
        assert wait_for(lambda: len(self.children()) == count, timeout), \
            f"{len(self.children())} children, expected {count}"
        return self.children()

    def signal(self, signum):
        self.proc.send_signal(signum)

    def wait(self, timeout=15):
        return self.proc.wait(timeout)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()


class SMTPClient:
    """Raw SMTP lines over one TCP connection."""

    def __init__(self, address, source="127.0.0.1", timeout=10):
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        if source and family == socket.AF_INET:
            self.sock.bind((source, 0))
        self.sock.connect(address)
        self.file = self.sock.makefile("rb")
        self.greeting = None

    def send(self, data):
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def reply(self):
        """One (multi-line) reply as (code, [texts]); (0, [raw lines]) at EOF."""
        texts = []
        while True:
            raw = self.file.readline()
            if not raw:
                return 0, texts
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            texts.append(line[4:])
            if len(line) < 4 or line[3] != "-":
                return int(line[:3]), texts

    def raw_line(self):
        return self.file.readline()

    def cmd(self, line):
        self.send(line + "\r\n")
        return self.reply()

    def start_data(self, sender="alice@sender.example", recipient="bob@example.test"):
        assert self.cmd("EHLO client.example.net")[0] == 250
        assert self.cmd(f"MAIL FROM:<{sender}>")[0] == 250
        assert self.cmd(f"RCPT TO:<{recipient}>")[0] == 250
        assert self.cmd("DATA")[0] == 354

    def closed(self, timeout=5):
        self.sock.settimeout(timeout)
        try:
            return self.file.readline() == b""
        except ConnectionResetError:
            return True

    def close(self):
        try:
            self.file.close()
            self.sock.close()
        except OSError:
            pass


def children_of(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(p) for p in handle.read().split()]
    except FileNotFoundError:
        return []


def session_workers(pid):
    """Children of ``pid`` whose process title shows a session."""
    found = []
    for child in children_of(pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as handle:
                title = handle.read().split(b"\0")[0]
        except OSError:
            continue
        if title.startswith(b"qpsmtpd: ") and title != b"qpsmtpd: spare":
            found.append(child)
    return found


def proc_status(pid):
    """/proc/<pid>/status as a dict of strings."""
    result = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            result[key] = value.strip()
    return result


def zombies_of(pid):
    """Children of ``pid`` that have exited but were not reaped."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] == "Z" and int(fields[1]) == pid:
            found.append(int(name))
    return found


def title_of(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as handle:
        return handle.read().split(b"\0")[0].decode(errors="replace")


def uss_kb(pid):
    """Private memory (unique set size) of a process in kB."""
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as handle:
        for line in handle:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total


def listening_port(log):
    match = re.search(r"Listening on 127\.0\.0\.1:(\d+)", log)
    return int(match.group(1)) if match else None
