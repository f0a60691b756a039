"""The real programs: qpsmtpd-forkserver on a loopback port, and the
per-connection qpsmtpd under Debian's tcpserver (ucspi-tcp)."""

import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT, maildir_messages, write_config

TCPSERVER = shutil.which("tcpserver")
TCPRULES = shutil.which("tcprules")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


def site(tmp_path, plugins, extra=None):
    """A config directory for a daemon; returns (config_dir, maildir)."""
    maildir = tmp_path / "maildir"
    files = {"me": "mx.example.org", "rcpthosts": "example.test",
             "spool_dir": str(tmp_path / "spool") + "/", "loglevel": "6",
             "plugins": list(plugins) + [f"queue/maildir {maildir}"]}
    files.update(extra or {})
    write_config(str(tmp_path / "config"), files)
    return str(tmp_path / "config"), maildir


class Daemon:
    def __init__(self, tmp_path, plugins=("relay", "rcpt_ok"), config=None, args=()):
        self.config_dir, self.maildir = site(tmp_path, plugins, config)
        self.port = free_port()
        self.log_path = tmp_path / "daemon.log"
        self.pid_file = tmp_path / "qpsmtpd.pid"
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "qpsmtpd_forkserver.py"),
             "--listen-address", "127.0.0.1", "--port", str(self.port),
             "--config-dir", self.config_dir, "--pid-file", str(self.pid_file),
             *args],
            cwd=str(tmp_path), stderr=open(self.log_path, "wb"),
            env=dict(os.environ, PYTHONPATH=ROOT))
        wait_for_port(self.port, self.proc)
        deadline = time.time() + 5
        while "cleaning up after" not in self.log() and time.time() < deadline:
            time.sleep(0.05)  # the probe connection's worker must be reaped

    def log(self):
        return self.log_path.read_text(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def daemon(tmp_path):
    started = []

    def factory(**kwargs):
        d = Daemon(tmp_path, **kwargs)
        started.append(d)
        return d

    yield factory
    for d in started:
        d.stop()


def children_of(pid):
    path = f"/proc/{pid}/task/{pid}/children"
    with open(path) as handle:
        return [int(p) for p in handle.read().split()]


def memory_kb(pid, field):
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(field)


def test_forkserver_delivers_to_maildir(daemon):
    d = daemon()
    with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as client:
        code, banner = client.ehlo("client.example.net")
        assert code == 250
        refused = client.sendmail("alice@sender.example", ["bob@example.test"],
                                  b"Subject: hi\r\n\r\nhello from the test\r\n")
        assert refused == {}
    messages = maildir_messages(d.maildir)
    assert len(messages) == 1
    assert messages[0].startswith(b"Return-Path: <alice@sender.example>\n"
                                  b"Delivered-To: bob@example.test\n")
    assert messages[0].endswith(b"Subject: hi\n\nhello from the test\n")
    time.sleep(0.3)
    log = d.log()
    assert "Listening on 127.0.0.1:" in log
    assert "Accepted connection 0/15 from 127.0.0.1 / localhost" in log or \
        "Accepted connection 0/15 from 127.0.0.1 /" in log
    assert "cleaning up after" in log


def test_forkserver_no_rdns_names_the_client_by_ip(daemon):
    d = daemon(args=("--no-rdns",))
    with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as client:
        code, text = client.helo("client.example.net")
        assert text.endswith(b"Hi [127.0.0.1] [127.0.0.1]; I am so happy to meet you.")


def test_forkserver_refuses_relaying(daemon):
    d = daemon()
    with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as client:
        client.ehlo("client.example.net")
        client.mail("alice@sender.example")
        code, text = client.rcpt("victim@elsewhere.example")
        assert (code, text) == (550, b"5.7.1 Relaying denied (#5.7.1)")


def test_forkserver_limit_connections_answers_421(daemon):
    d = daemon(args=("--limit-connections", "1"))
    first = socket.create_connection(("127.0.0.1", d.port), timeout=5)
    assert first.recv(1024).startswith(b"220 ")
    second = socket.create_connection(("127.0.0.1", d.port), timeout=5)
    assert second.recv(1024).startswith(b"421 ")
    first.close()
    second.close()


def test_forkserver_pid_file_and_sigterm(daemon):
    d = daemon()
    assert int(d.pid_file.read_text()) == d.proc.pid
    d.stop()
    assert d.proc.returncode == 0
    assert not d.pid_file.exists()


def test_forkserver_sighup_reloads_and_keeps_old_on_error(daemon):
    d = daemon()
    config = d.config_dir
    with open(os.path.join(config, "me"), "w") as handle:
        handle.write("reloaded.example.org\n")
    d.proc.send_signal(signal.SIGHUP)
    time.sleep(1.5)
    with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as client:
        assert b"reloaded.example.org" in client.ehlo("c.example")[1]
    with open(os.path.join(config, "plugins"), "a") as handle:
        handle.write("no_such_plugin\n")
    d.proc.send_signal(signal.SIGHUP)
    time.sleep(1.5)
    assert "reload failed, keeping the running configuration" in d.log()
    with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as client:
        assert client.ehlo("c.example")[0] == 250


def test_forkserver_refuses_to_start_with_missing_plugin(tmp_path):
    config_dir, _ = site(tmp_path, ["no_such_plugin"])
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "qpsmtpd_forkserver.py"), "--port",
         str(free_port()), "--listen-address", "127.0.0.1", "--config-dir", config_dir],
        capture_output=True, text=True, timeout=30, env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 1
    assert "Plugin no_such_plugin not found in our plugin dirs" in result.stderr


def test_worker_memory_stays_flat_for_a_50mb_message(daemon):
    """A 50 MB message is streamed to the spool: the worker's peak resident
    memory grows by a few MB at most."""
    d = daemon(config={"databytes": str(100 * 1024 * 1024)})
    sock = socket.create_connection(("127.0.0.1", d.port), timeout=30)
    reader = sock.makefile("rb")
    assert reader.readline().startswith(b"220")
    sock.sendall(b"EHLO c.example\r\n")
    while not reader.readline().startswith(b"250 "):
        pass
    sock.sendall(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
    for _ in range(3):
        reader.readline()
    worker = children_of(d.proc.pid)[0]
    before = memory_kb(worker, "VmRSS")
    line = b"x" * 998 + b"\r\n"
    chunk = b"Subject: big\r\n\r\n" + line * 1000
    sock.sendall(chunk)
    block = line * 1024
    for _ in range(50):
        sock.sendall(block)  # 50 MiB of 1000-byte lines
    sock.sendall(b".\r\n")
    reply = reader.readline()
    assert reply.startswith(b"250 "), reply
    peak = memory_kb(worker, "VmHWM")  # the worker waits for the next command
    growth_mb = (peak - before) / 1024
    print(f"worker VmRSS at DATA {before} kB, peak {peak} kB, growth {growth_mb:.2f} MB")
    assert growth_mb < 8, f"worker grew by {growth_mb:.1f} MB"
    sock.close()
    message = maildir_messages(d.maildir)[0]
    assert len(message) > 50 * 1024 * 1000


@pytest.fixture
def tcpserver(tmp_path):
    if not TCPSERVER:
        pytest.skip("tcpserver (Debian ucspi-tcp) not installed; `make test` installs it as root")
    procs = []

    def factory(plugins=("relay", "rcpt_ok"), rules=None):
        config_dir, maildir = site(tmp_path, plugins)
        port = free_port()
        command = [TCPSERVER, "-v", "-R", "-H", "-l", "localhost"]
        if rules:
            rules_txt = tmp_path / "rules.txt"
            rules_txt.write_text(rules)
            subprocess.run([TCPRULES, str(tmp_path / "rules.cdb"), str(tmp_path / "rules.tmp")],
                           input=rules, text=True, check=True)
            command += ["-x", str(tmp_path / "rules.cdb")]
        command += ["127.0.0.1", str(port), sys.executable, "-m", "qpsmtpd",
                    "--config-dir", config_dir]
        log_path = tmp_path / "tcpserver.log"
        proc = subprocess.Popen(command, cwd=str(tmp_path), stderr=open(log_path, "wb"),
                                env=dict(os.environ, PYTHONPATH=ROOT))
        procs.append(proc)
        wait_for_port(port, proc)
        return port, maildir, log_path

    yield factory
    for proc in procs:
        proc.terminate()
        proc.wait(5)


def test_tcpserver_session_delivers(tcpserver):
    port, maildir, log_path = tcpserver()
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        code, text = client.helo("client.example.net")
        assert code == 250
        assert text.endswith(b"Hi [127.0.0.1] [127.0.0.1]; I am so happy to meet you.")
        client.sendmail("a@sender.example", ["bob@example.test"], b"Subject: t\r\n\r\nvia tcpserver\r\n")
    message = maildir_messages(maildir)[0]
    assert b"Received: from [127.0.0.1] (HELO client.example.net) (127.0.0.1)\n" in message
    assert message.endswith(b"\nvia tcpserver\n")
    log = log_path.read_text()
    assert "Connection from [127.0.0.1] [127.0.0.1]" in log


def test_tcpserver_relayclient_from_rules(tcpserver):
    if not TCPRULES:
        pytest.skip("tcprules not installed")
    port, maildir, _ = tcpserver(rules='127.0.0.1:allow,RELAYCLIENT=""\n:allow\n')
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("c.example")
        client.mail("a@sender.example")
        assert client.rcpt("someone@elsewhere.example")[0] == 250


def test_tcpserver_without_relayclient_refuses_relay(tcpserver):
    port, maildir, _ = tcpserver()
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("c.example")
        client.mail("a@sender.example")
        assert client.rcpt("someone@elsewhere.example")[0] == 550


def test_qpsmtpd_refuses_a_non_socket_stdin():
    result = subprocess.run([sys.executable, "-m", "qpsmtpd"], stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=30,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 1
    assert "must be called from tcpserver, (x)inetd or a similar program" in result.stderr


def test_plugin_doc_prints_the_manual():
    result = subprocess.run([sys.executable, "-m", "qpsmtpd", "--plugin-doc", "queue/maildir"],
                            capture_output=True, text=True, timeout=30, cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 0
    assert result.stdout.startswith("queue/maildir")
    missing = subprocess.run([sys.executable, "-m", "qpsmtpd", "--plugin-doc", "nope"],
                             capture_output=True, text=True, timeout=30, cwd=ROOT,
                             env=dict(os.environ, PYTHONPATH=ROOT))
    assert missing.returncode == 1
    assert "Plugin nope not found" in missing.stderr
