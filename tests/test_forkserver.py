"""qpsmtpd-forkserver as a mail admin runs it: the real daemon on a loopback
port, real clients, real signals; children, zombies, user ids and process
titles read from /proc."""

import concurrent.futures
import itertools
import os
import resource
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from conftest import ROOT, maildir_messages
from forkserver_fixtures import (
    SCRIPT, Daemon, SMTPClient, env, free_port, proc_status, site, title_of, wait_for,
    zombies_of)

import qpsmtpd_forkserver
from qpsmtpd.forkserver import SystemdNotify, plain_ip

ME = "mx.example.org"
SHUTDOWN_421 = "4.3.2 mx.example.org Service shutting down, closing transmission channel"


def run_script(*args, timeout=30, **kwargs):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                          timeout=timeout, env=env(), **kwargs)


def socket_inodes(pid):
    """The TCP sockets a process holds (listeners and clients), by inode;
    the Unix sockets to its workers left out."""
    tcp = set()
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as handle:
                tcp.update(f"socket:[{line.split()[9]}]" for line in list(handle)[1:])
        except FileNotFoundError:
            pass
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target in tcp:
            found.add(target)
    return found


# -- options and start-up ----------------------------------------------------------

def test_help_lists_the_options():
    result = run_script("--help")
    assert result.returncode == 0
    for option in ("--listen-address", "--port", "--limit-connections", "--max-from-ip",
                   "--user", "--pid-file", "--detach", "--no-rdns", "--config-dir",
                   "--listen-fd", "--grace-period"):
        assert option in result.stdout


@pytest.mark.parametrize("args, complaint", [
    (["--port", "99999"], "not a port number: '99999'"),
    (["--port", "smtp"], "not a port number: 'smtp'"),
    (["--listen-address", "192.0.2.1:2x"], "not an address[:port]: '192.0.2.1:2x'"),
    (["--listen-address", "[192.0.2.1]:25"], "not an IPv6 address: '192.0.2.1'"),
    (["--listen-address", "a b"], "not an address[:port]: 'a b'"),
    (["--limit-connections", "0"], "not a positive number: '0'"),
    (["--max-from-ip", "-1"], "not a number: '-1'"),
    (["--grace-period", "soon"], "not a number of seconds: 'soon'"),
    (["--user", "root;id"], "not a user name: 'root;id'"),
    (["--no-such-option"], "unrecognized arguments: --no-such-option"),
])
def test_bad_options_print_usage(args, complaint):
    result = run_script(*args)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: qpsmtpd-forkserver")
    assert complaint in result.stderr


@pytest.mark.parametrize("text, parsed", [
    ("192.0.2.1", ("192.0.2.1", None)),
    ("192.0.2.1:25", ("192.0.2.1", 25)),
    ("[2001:db8::1]:587", ("2001:db8::1", 587)),
    ("[::]", ("::", None)),
    ("2001:db8::1", ("2001:db8::1", None)),
    ("mx.example.org:25", ("mx.example.org", 25)),
    ("localhost", ("localhost", None)),
])
def test_listen_address_forms(text, parsed):
    assert qpsmtpd_forkserver.listen_address(text) == parsed


def test_addresses_without_port_listen_on_every_port():
    options = qpsmtpd_forkserver.parse_options(
        ["-l", "127.0.0.1", "-l", "[::1]:2600", "-p", "25", "-p", "587", "-l", "127.0.0.1"])
    assert qpsmtpd_forkserver.listen_addresses(options) == [
        ("127.0.0.1", 25), ("127.0.0.1", 587), ("::1", 2600)]


def test_listens_on_ipv4_and_ipv6_addresses_and_ports(tmp_path):
    second = free_port()
    d = Daemon(tmp_path, args=("--listen-address", f"[::1]:{second}",
                               "--listen-address", f"127.0.0.1:{second}", "-H"))
    try:
        log = d.log()
        assert f"Listening on 127.0.0.1:{d.port}" in log
        assert f"Listening on 127.0.0.1:{second}" in log
        assert f"Listening on [::1]:{second}" in log
        client = SMTPClient(("::1", second), source=None)
        assert client.reply()[0] == 220
        assert client.cmd("HELO c.example") == (
            250, [f"{ME} Hi [::1] [::1]; I am so happy to meet you."])
        client.close()
        client = SMTPClient(("127.0.0.1", second))
        assert client.reply()[0] == 220
        client.close()
    finally:
        d.stop()


def test_port_in_use_stops_the_start(tmp_path):
    config_dir, _ = site(tmp_path, ["rcpt_ok"])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_script("-l", "127.0.0.1", "-p", str(port), "--config-dir", config_dir)
    assert result.returncode == 1
    assert f"Creating TCP socket 127.0.0.1:{port}: Address already in use" in result.stderr


def test_refuses_to_start_with_missing_plugin(tmp_path):
    config_dir, _ = site(tmp_path, ["no_such_plugin"])
    pid_file = tmp_path / "qpsmtpd.pid"
    result = run_script("--port", str(free_port()), "--listen-address", "127.0.0.1",
                        "--config-dir", config_dir, "--pid-file", str(pid_file))
    assert result.returncode == 1
    assert "cannot load plugins: Plugin no_such_plugin not found in our plugin dirs" \
        in result.stderr
    assert not pid_file.exists()


def test_unusable_spool_dir_stops_the_start(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    config_dir, _ = site(tmp_path, ["rcpt_ok"], {"spool_dir": str(tmp_path / "file") + "/"})
    result = run_script("--port", str(free_port()), "--listen-address", "127.0.0.1",
                        "--config-dir", config_dir)
    assert result.returncode == 1
    assert "qpsmtpd-forkserver: " in result.stderr and "spool" in result.stderr


# -- pid file ------------------------------------------------------------------------

def test_pid_file_written_and_removed(daemon):
    d = daemon()
    assert open(d.pid_file).read() == f"{d.pid}\n"
    d.stop()
    assert d.proc.returncode == 0
    assert not os.path.exists(d.pid_file)
    assert "qpsmtpd-forkserver stopped" in d.log()


def test_live_daemon_in_pid_file_refuses_a_second_start(daemon):
    d = daemon()
    result = run_script("--listen-address", "127.0.0.1", "--port", str(free_port()),
                        "--config-dir", d.config_dir, "--pid-file", d.pid_file)
    assert result.returncode == 1
    assert f"Found an already running qpsmtpd with pid {d.pid}." in result.stderr
    assert open(d.pid_file).read() == f"{d.pid}\n"      # untouched
    with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as client:
        assert client.noop()[0] == 250


@pytest.mark.parametrize("content", ["dead", "garbage", "unrelated"])
def test_stale_pid_file_is_replaced(tmp_path, content):
    pid_file = tmp_path / "d" / "qpsmtpd.pid"
    pid_file.parent.mkdir()
    if content == "dead":
        gone = subprocess.Popen(["true"])
        gone.wait()
        pid_file.write_text(f"{gone.pid}\n")
    elif content == "garbage":
        pid_file.write_text("not a pid\n")
    else:   # a live process that is no qpsmtpd: the pid was reused
        pid_file.write_text(f"{os.getppid()}\n")
    d = Daemon(tmp_path / "d")
    try:
        assert "removed a stale pid file" in d.log()
        assert pid_file.read_text() == f"{d.pid}\n"
    finally:
        d.stop()


# -- limits ----------------------------------------------------------------------------

def test_limit_connections_answers_421_and_counts_right(daemon):
    d = daemon(args=("--limit-connections", "2", "--max-from-ip", "0"))
    first, second = d.connect(), d.connect()
    assert first.greeting[0] == second.greeting[0] == 220
    third = d.connect(greeting=False)
    assert third.raw_line() == b"421 Too many concurrent connections, try again later\r\n"
    assert third.closed()
    d.wait_log("Too many connections: 2 >= 2.  Refusing 127.0.0.1")
    assert first.cmd("QUIT")[0] == 221
    first.close()
    d.wait_children(1)
    fourth = d.connect()
    assert fourth.greeting[0] == 220
    for client in (second, third, fourth):
        client.close()


def test_max_from_ip_answers_421_per_address(daemon):
    d = daemon(args=("--max-from-ip", "2"))
    first, second = d.connect(), d.connect()
    third = d.connect(greeting=False)
    assert third.raw_line() == b"421 too many connections from 127.0.0.1, try again later\r\n"
    assert third.closed()
    other = d.connect(source="127.0.0.2")      # another client address is welcome
    assert other.greeting[0] == 220
    d.wait_log("too many connections from 127.0.0.1: 2 >= 2.  Refusing it")
    for client in (first, second, third, other):
        client.close()


def test_pre_connection_plugins_see_the_limit_and_children(daemon, tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "show_children.py").write_text(
        '"""show_children - test plugin: logs what pre-connection gets."""\n'
        "from qpsmtpd.plugin import Plugin\n"
        "class ShowChildren(Plugin):\n"
        "    def hook_pre_connection(self, session, info):\n"
        "        self.log_pass(f\"max {info['max_conn_ip']} children {info['child_addrs']}\")\n")
    d = daemon(plugins=("show_children", "hosts_allow", "relay", "rcpt_ok"),
               config={"hosts_allow": ["127.0.0.3  DENY go away"]},
               plugin_dirs=[plugins], args=("--max-from-ip", "3"))
    first = d.connect(source="127.0.0.2")
    second = d.connect()
    d.wait_log("(pre-connection) show_children: pass, max 3 children ['127.0.0.2']")
    denied = d.connect(source="127.0.0.3", greeting=False)
    assert denied.raw_line() == b"550 go away\r\n"
    assert denied.closed()
    d.wait_log("(pre-connection) hosts_allow: fail, go away")
    for client in (first, second, denied):
        client.close()


# -- SIGHUP ------------------------------------------------------------------------------

STAMP = ('"""stamp - test plugin: HELP answers with its version."""\n'
         "from qpsmtpd.constants import OK\n"
         "from qpsmtpd.plugin import Plugin\n"
         "class Stamp(Plugin):\n"
         "    def hook_help(self, session, *args):\n"
         "        return OK, 'stamp {version}'\n")


def test_sighup_reloads_config_and_plugins_while_a_session_stays_open(daemon, tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "stamp.py").write_text(STAMP.format(version="one"))
    d = daemon(plugins=("stamp", "relay", "rcpt_ok"), plugin_dirs=[plugins])
    sockets = socket_inodes(d.pid)
    old = d.connect()
    assert old.cmd("EHLO c.example")[1][0].startswith(f"{ME} Hi")
    assert old.cmd("HELP") == (214, ["2.0.0 stamp one"])

    with open(os.path.join(d.config_dir, "me"), "w") as handle:
        handle.write("reloaded.example.org\n")
    (plugins / "stamp.py").write_text(STAMP.format(version="two"))
    d.signal(signal.SIGHUP)
    d.wait_log("configuration and plugins reloaded")

    new = d.connect()
    assert new.greeting[1][0].startswith("reloaded.example.org ESMTP")
    assert new.cmd("HELP") == (214, ["stamp two"])
    assert old.cmd("HELP") == (214, ["2.0.0 stamp one"])      # the session keeps its own
    old.cmd("MAIL FROM:<a@sender.example>")
    old.cmd("RCPT TO:<bob@example.test>")
    assert old.cmd("DATA")[0] == 354
    old.send("Subject: across a reload\r\n\r\nstill here\r\n.\r\n")
    assert old.reply()[0] == 250
    assert maildir_messages(d.maildir)[0].endswith(b"\nstill here\n")
    assert d.log().count("Listening on") == 1
    old.close()
    new.close()
    d.wait_children(0)
    assert socket_inodes(d.pid) == sockets           # the same listening socket


@pytest.mark.parametrize("breakage", ["missing plugin", "syntax error", "bad spool_dir"])
def test_broken_config_on_sighup_keeps_the_running_one(daemon, tmp_path, breakage):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "stamp.py").write_text(STAMP.format(version="one"))
    d = daemon(plugins=("stamp", "relay", "rcpt_ok"), plugin_dirs=[plugins])
    if breakage == "missing plugin":
        with open(os.path.join(d.config_dir, "plugins"), "a") as handle:
            handle.write("no_such_plugin\n")
        reason = "cannot load plugins: Plugin no_such_plugin not found"
    elif breakage == "syntax error":
        (plugins / "stamp.py").write_text("class Stamp(:\n")
        reason = "cannot load plugins: cannot load plugin file"
    else:
        with open(os.path.join(d.config_dir, "spool_dir"), "w") as handle:
            handle.write("/proc/no/such/spool/\n")
        reason = "reload failed, keeping the running configuration: "
    d.signal(signal.SIGHUP)
    d.wait_log("reload failed, keeping the running configuration: ")
    assert reason in d.log()
    client = d.connect()
    assert client.cmd("HELP") == (214, ["stamp one"])     # the running plugins
    client.close()
    assert d.proc.poll() is None


# -- SIGTERM / SIGINT -----------------------------------------------------------------------

def test_sigterm_lets_data_in_flight_finish(daemon):
    d = daemon(args=("--grace-period", "20"))
    sending = d.connect()
    sending.start_data()
    sending.send("Subject: in flight\r\n\r\nfirst half\r\n")
    idle = d.connect()
    assert idle.cmd("EHLO c.example")[0] == 250
    d.wait_children(2)
    d.signal(signal.SIGTERM)
    assert idle.reply() == (421, [SHUTDOWN_421])       # waiting for a command: at once
    assert idle.closed()
    d.wait_log("SIGTERM received: not accepting connections; 2 sessions may finish "
               "within 20 s")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", d.port), timeout=2)
    assert d.proc.poll() is None                        # still waiting for `sending`
    sending.send("second half\r\n.\r\n")
    assert sending.reply() == (250, ["2.0.0 Queued!"])
    assert sending.reply() == (421, [SHUTDOWN_421])
    assert sending.closed()
    assert d.wait() == 0
    [message] = maildir_messages(d.maildir)
    assert message.endswith(b"Subject: in flight\n\nfirst half\nsecond half\n")
    assert not os.path.exists(d.pid_file)
    assert "worker" not in d.log().split("SIGTERM received")[1]   # nobody was killed


def test_sigint_stops_gracefully_like_sigterm(daemon):
    d = daemon()
    client = d.connect()
    d.wait_children(1)
    d.signal(signal.SIGINT)
    assert client.reply() == (421, [SHUTDOWN_421[6:]])   # before EHLO: no status code
    assert d.wait() == 0
    assert "SIGINT received" in d.log()


def test_grace_period_over_ends_the_sessions(daemon):
    d = daemon(args=("--grace-period", "1"))
    stuck = d.connect()
    stuck.start_data()
    [worker] = d.wait_children(1)
    started = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.wait() == 0
    assert 0.9 < time.monotonic() - started < 5
    assert stuck.closed()
    log = d.log()
    assert "grace period over: ending 1 sessions" in log
    assert f"worker {worker} ended by SIGKILL" in log
    assert "out of memory" not in log
    assert maildir_messages(d.maildir) == []


def test_second_sigterm_ends_at_once(daemon):
    d = daemon(args=("--grace-period", "60"))
    stuck = d.connect()
    stuck.start_data()
    d.wait_children(1)
    d.signal(signal.SIGTERM)
    d.wait_log("SIGTERM received")
    started = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.wait() == 0
    assert time.monotonic() - started < 3
    assert "SIGTERM again: ending 1 sessions now" in d.log()
    assert stuck.closed()
    assert zombies_of(d.pid) == []


# -- load: bookkeeping, zombies ----------------------------------------------------------------

def test_200_concurrent_clients_are_served_or_refused_politely(daemon):
    d = daemon(args=("--limit-connections", "100", "--max-from-ip", "0"))
    start, greeted = threading.Barrier(200, timeout=60), threading.Barrier(200, timeout=60)

    def one_client(n):
        start.wait()
        client = SMTPClient(("127.0.0.1", d.port), timeout=30)
        try:
            code, texts = client.reply()
            greeted.wait()          # all 200 at once: the first 100 sessions are open
            if code == 421:
                assert texts == ["Too many concurrent connections, try again later"]
                assert client.closed()
                return "refused"
            assert code == 220
            client.start_data(recipient=f"user{n}@example.test")
            client.send(f"Subject: client {n}\r\n\r\nbody {n}\r\n.\r\n")
            assert client.reply()[0] == 250
            assert client.cmd("QUIT")[0] == 221
            return "served"
        finally:
            client.close()

    with concurrent.futures.ThreadPoolExecutor(200) as pool:
        outcomes = list(pool.map(one_client, range(200)))
    served = outcomes.count("served")
    assert (served, outcomes.count("refused")) == (100, 100)
    d.wait_children(0, timeout=20)
    assert zombies_of(d.pid) == []
    assert len(maildir_messages(d.maildir)) == served
    log = d.log()
    assert log.count("Accepted connection") == served
    d.wait_log("cleaning up after", count=served)
    print(f"200 concurrent clients: {served} served, {200 - served} refused with 421")


def test_burst_of_500_short_connections_keeps_the_counts_right(daemon):
    limit = 20
    d = daemon(args=("--limit-connections", str(limit), "--max-from-ip", "0"))

    def short(_):
        client = SMTPClient(("127.0.0.1", d.port), timeout=30)
        try:
            code, _ = client.reply()
            if code == 220:
                client.send("QUIT\r\n")
            return code
        finally:
            client.close()

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        codes = list(pool.map(short, range(500)))
    assert set(codes) <= {220, 421}
    d.wait_children(0, timeout=20)
    assert zombies_of(d.pid) == []
    log = d.log()
    assert log.count("Accepted connection") == codes.count(220)
    d.wait_log("cleaning up after", count=codes.count(220))
    # the count is exact: `limit` sessions fit, the next one is refused
    clients = [d.connect() for _ in range(limit)]
    assert {c.greeting[0] for c in clients} == {220}
    extra = d.connect(greeting=False)
    assert extra.raw_line().startswith(b"421 Too many concurrent connections")
    for client in clients + [extra]:
        client.close()


# -- failures ---------------------------------------------------------------------------------

CRASHY = ('"""crashy - test plugin: some HELO names end the worker badly."""\n'
          "import os, signal\n"
          "from qpsmtpd.plugin import Plugin\n"
          "class Crashy(Plugin):\n"
          "    def hook_helo(self, session, host, *rest):\n"
          "        if host == 'segv.example':\n"
          "            os.kill(os.getpid(), signal.SIGSEGV)\n"
          "        if host == 'exit.example':\n"
          "            os._exit(7)\n"
          "        if host == 'raise.example':\n"
          "            raise KeyboardInterrupt('out of the blue')\n")


@pytest.mark.parametrize("helo, logged", [
    ("segv.example", "killed by signal 11 (SIGSEGV)"),
    ("exit.example", "exited with status 7 (unknown status)"),
    ("raise.example", "exited with status 1 (session failed)"),
])
def test_crashing_worker_never_takes_the_parent_down(daemon, tmp_path, helo, logged):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "crashy.py").write_text(CRASHY)
    d = daemon(plugins=("crashy", "relay", "rcpt_ok"), plugin_dirs=[plugins])
    victim = d.connect()
    [worker] = d.wait_children(1)
    victim.send(f"HELO {helo}\r\n")
    assert victim.closed()
    d.wait_log(f"worker {worker} {logged}")
    d.wait_log(f"cleaning up after {worker}")
    if helo == "raise.example":
        assert "worker failed: KeyboardInterrupt('out of the blue')" in d.log()
    after = d.connect()
    assert after.cmd("HELO fine.example")[0] == 250
    after.close()
    assert d.proc.poll() is None


def test_emfile_on_accept_backs_off_and_recovers(daemon):
    d = daemon()
    open_fds = {int(fd) for fd in os.listdir(f"/proc/{d.pid}/fd")}
    lowest_free = next(n for n in itertools.count() if n not in open_fds)
    soft, hard = resource.prlimit(d.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(d.pid, resource.RLIMIT_NOFILE, (lowest_free, hard))
    try:
        waiting = SMTPClient(("127.0.0.1", d.port))
        d.wait_log("accept failed: Too many open files; not accepting for 0.1 s")
        d.wait_log("not accepting for 0.4 s")             # backing off, not spinning
        assert d.proc.poll() is None
    finally:
        resource.prlimit(d.pid, resource.RLIMIT_NOFILE, (soft, hard))
    waiting.sock.settimeout(5)
    assert waiting.reply()[0] == 220                  # served once descriptors are back
    waiting.close()


def test_the_parent_never_waits_on_a_client(daemon):
    """A client that says nothing, and clients over the limit that flood the
    socket without reading, leave the parent free: it refuses each at once
    and answers a SIGHUP meanwhile."""
    d = daemon(args=("--limit-connections", "2", "--max-from-ip", "0"))
    silent = SMTPClient(("127.0.0.1", d.port))          # never reads, never writes
    holder = d.connect()
    d.wait_children(2)
    floods = []
    for _ in range(20):
        flood = SMTPClient(("127.0.0.1", d.port))
        flood.sock.setblocking(False)
        try:
            flood.sock.send(b"EHLO flood.example\r\n" * 20000)
        except BlockingIOError:
            pass
        floods.append(flood)
    started = time.monotonic()
    d.signal(signal.SIGHUP)
    d.wait_log("configuration and plugins reloaded", timeout=5)
    d.wait_log("Too many connections: 2 >= 2.", count=20, timeout=5)
    assert time.monotonic() - started < 3
    assert len(d.children()) == 2
    holder.close()
    d.wait_children(1)
    late = d.connect()
    assert late.greeting[0] == 220
    for client in floods + [silent, late]:
        client.close()


# -- process titles --------------------------------------------------------------------------

def test_worker_title_follows_the_session(daemon):
    d = daemon(args=("--no-rdns",))
    client = d.connect()
    [worker] = d.wait_children(1)
    assert wait_for(lambda: title_of(worker) == "qpsmtpd: 127.0.0.1 ([127.0.0.1]) idle")
    client.start_data()
    assert wait_for(lambda: title_of(worker) == "qpsmtpd: 127.0.0.1 ([127.0.0.1]) DATA")
    client.send("Subject: t\r\n\r\n.\r\n")
    assert client.reply()[0] == 250
    assert wait_for(lambda: title_of(worker) == "qpsmtpd: 127.0.0.1 ([127.0.0.1]) idle")
    assert "qpsmtpd_forkserver.py" in open(f"/proc/{d.pid}/cmdline").read()   # parent
    client.close()


def test_worker_title_shows_the_reverse_name(daemon):
    d = daemon()
    client = d.connect()
    [worker] = d.wait_children(1)
    name = socket.gethostbyaddr("127.0.0.1")[0]
    assert wait_for(lambda: title_of(worker) == f"qpsmtpd: 127.0.0.1 ({name}) idle")
    assert client.cmd("HELO c.example")[1][0].startswith(f"{ME} Hi {name} [127.0.0.1]")
    client.close()


# -- delivery (what the daemon is for) ------------------------------------------------------

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
    d.wait_log("cleaning up after")
    log = d.log()
    assert "Listening on 127.0.0.1:" in log
    assert "Accepted connection 0/15 from 127.0.0.1 / " in log


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


def test_worker_memory_stays_flat_for_a_50mb_message(daemon):
    """A 50 MB message is streamed to the spool: the worker's peak resident
    memory grows by a few MB at most."""
    d = daemon(config={"databytes": str(100 * 1024 * 1024)})
    client = d.connect()
    client.sock.settimeout(30)
    client.start_data()
    [worker] = d.wait_children(1)
    before = int(proc_status(worker)["VmRSS"].split()[0])
    line = b"x" * 998 + b"\r\n"
    client.send(b"Subject: big\r\n\r\n" + line * 1000)
    block = line * 1024
    for _ in range(50):
        client.send(block)  # 50 MiB of 1000-byte lines
    client.send(b".\r\n")
    code, texts = client.reply()
    assert code == 250, texts
    peak = int(proc_status(worker)["VmHWM"].split()[0])
    growth_mb = (peak - before) / 1024
    print(f"worker VmRSS at DATA {before} kB, peak {peak} kB, growth {growth_mb:.2f} MB")
    assert growth_mb < 8, f"worker grew by {growth_mb:.1f} MB"
    client.close()
    assert len(maildir_messages(d.maildir)[0]) > 50 * 1024 * 1000


def test_plain_ip_unmaps_ipv4_on_an_ipv6_socket():
    assert plain_ip("::ffff:192.0.2.7") == "192.0.2.7"
    assert plain_ip("::ffff:c000:207") == "::ffff:c000:207"
    assert plain_ip("2001:db8::7") == "2001:db8::7"


# -- --detach ---------------------------------------------------------------------------------

def _gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_detach_then_kill_from_the_pid_file(tmp_path):
    config_dir, maildir = site(tmp_path, ["relay", "rcpt_ok"])
    pid_file = tmp_path / "qpsmtpd.pid"
    port = free_port()
    stray_read, stray_write = os.pipe()     # a descriptor the caller leaked
    stray_inode = os.fstat(stray_write).st_ino
    try:
        result = run_script("--detach", "--pid-file", str(pid_file), "-l", "127.0.0.1",
                            "-p", str(port), "--config-dir", config_dir, cwd=str(tmp_path),
                            pass_fds=(stray_write,))
    finally:
        os.close(stray_write)
    assert os.read(stray_read, 10) == b""    # nobody holds the write end any more
    os.close(stray_read)
    assert result.returncode == 0, result.stderr
    assert "detaching: the log goes to /dev/null unless config/logging names a " \
           "logging plugin" in result.stderr
    pid = int(pid_file.read_text())        # written before the command returned
    try:
        assert os.getsid(pid) != os.getsid(0)                  # its own session
        assert proc_status(pid)["PPid"] != str(os.getpid())
        assert os.readlink(f"/proc/{pid}/fd/2") == "/dev/null"
        assert os.readlink(f"/proc/{pid}/cwd") == str(tmp_path)
        assert not any(os.readlink(f"/proc/{pid}/fd/{fd}") == f"pipe:[{stray_inode}]"
                       for fd in os.listdir(f"/proc/{pid}/fd"))  # inherited: closed
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail("a@sender.example", ["bob@example.test"],
                            b"Subject: detached\r\n\r\nfrom the background\r\n")
        assert len(maildir_messages(maildir)) == 1
        stop = subprocess.run(["sh", "-c", f"kill $(cat {pid_file})"], timeout=10)
        assert stop.returncode == 0
        assert wait_for(lambda: _gone(pid), timeout=10)
        assert wait_for(lambda: not pid_file.exists(), timeout=5)
    finally:
        if not _gone(pid):
            os.kill(pid, signal.SIGKILL)


def test_detach_reports_a_failed_start(tmp_path):
    config_dir, _ = site(tmp_path, ["no_such_plugin"])
    result = run_script("--detach", "-l", "127.0.0.1", "-p", str(free_port()),
                        "--config-dir", config_dir)
    assert result.returncode == 1
    assert "Plugin no_such_plugin not found" in result.stderr


def test_detach_with_a_logging_plugin_keeps_the_log(tmp_path):
    log_file = tmp_path / "qpsmtpd.log"
    config_dir, _ = site(tmp_path, ["relay", "rcpt_ok"],
                         {"logging": [f"logging/file loglevel LOGINFO {log_file}"]})
    pid_file = tmp_path / "qpsmtpd.pid"
    port = free_port()
    result = run_script("--detach", "--pid-file", str(pid_file), "-l", "127.0.0.1",
                        "-p", str(port), "--config-dir", config_dir)
    assert result.returncode == 0, result.stderr
    assert "detaching" not in result.stderr
    pid = int(pid_file.read_text())
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.noop()
        assert wait_for(lambda: "dispatching noop" in log_file.read_text())
    finally:
        os.kill(pid, signal.SIGTERM)
        assert wait_for(lambda: _gone(pid), timeout=10)


# -- --user ------------------------------------------------------------------------------------

def _python_for_nobody():
    """An interpreter the nobody user can run (this one may live in a home
    directory nobody cannot enter), or None."""
    for python in (sys.executable, "/usr/bin/python3"):
        probe = subprocess.run(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
             python, "-c", "import qpsmtpd.forkserver"],
            capture_output=True, env=env(), timeout=30)
        if probe.returncode == 0:
            return python
    return None


@pytest.fixture
def nobody_site():
    if os.geteuid() != 0:
        pytest.skip("--user needs root to drop privileges")
    try:
        import pwd
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no nobody user")
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) is needed to probe the interpreter")
    python = _python_for_nobody()
    if python is None:
        pytest.skip("no python3 the nobody user may run")
    directory = tempfile.mkdtemp(prefix="qpsmtpd-nobody-")
    os.chmod(directory, 0o755)
    os.chown(directory, nobody.pw_uid, nobody.pw_gid)
    yield directory, python, nobody
    shutil.rmtree(directory, ignore_errors=True)


def test_user_nobody_serves_with_the_dropped_uid(nobody_site):
    directory, python, nobody = nobody_site
    d = Daemon(directory, args=("--user", "nobody"), python=python)
    try:
        assert "Running as user nobody, group nogroup" in d.log()
        client = d.connect()
        [worker] = d.wait_children(1)
        for pid in (d.pid, worker):
            status = proc_status(pid)
            assert status["Uid"].split() == [str(nobody.pw_uid)] * 4
            assert status["Gid"].split() == [str(nobody.pw_gid)] * 4
            assert status["Groups"].split() == [str(nobody.pw_gid)]
        client.start_data()
        client.send("Subject: as nobody\r\n\r\nhi\r\n.\r\n")
        assert client.reply()[0] == 250
        client.close()
        [message] = os.listdir(os.path.join(d.maildir, "new"))
        assert os.stat(os.path.join(d.maildir, "new", message)).st_uid == nobody.pw_uid
        d.stop()
        assert d.proc.returncode == 0
        assert not os.path.exists(d.pid_file)       # nobody owns the directory
    finally:
        d.stop()


def test_unknown_user_stops_the_start(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    config_dir, _ = site(tmp_path, ["rcpt_ok"])
    result = run_script("-l", "127.0.0.1", "-p", str(free_port()), "--config-dir",
                        config_dir, "--user", "no-such-user-here")
    assert result.returncode == 1
    assert "unable to determine uid/gid for no-such-user-here" in result.stderr


def test_fork_failure_answers_421_and_recovers(nobody_site):
    """RLIMIT_NPROC 1 for the daemon running as nobody (without capabilities
    the limit holds): every fork fails until the limit is raised again."""
    directory, python, nobody = nobody_site
    hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    d = Daemon(directory, args=("--user", "nobody"), python=python,
               preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NPROC, (1, hard)))
    try:
        refused = d.connect(greeting=False)
        assert refused.raw_line() == \
            b"421 Service temporarily unavailable, try again later\r\n"
        assert refused.closed()
        d.wait_log("fork failed: Resource temporarily unavailable; answering "
                   "127.0.0.1 with 421")
        assert d.proc.poll() is None
        # only a process of the same user may raise the limit (no CAP_SYS_RESOURCE)
        subprocess.run(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", python, "-c",
             f"import resource; resource.prlimit({d.pid}, resource.RLIMIT_NPROC, "
             f"({hard}, {hard}))"], check=True, timeout=30)
        served = d.connect()
        assert served.greeting[0] == 220
        served.close()
    finally:
        d.stop()


# -- systemd -------------------------------------------------------------------------------------

def show_env(directory):
    """A plugin directory with ``show_env``: logs the systemd variables a
    worker still sees."""
    plugins = directory / "plugins"
    plugins.mkdir(exist_ok=True)
    (plugins / "show_env.py").write_text(
        '"""show_env - test plugin."""\n'
        "import os\n"
        "from qpsmtpd.plugin import Plugin\n"
        "class ShowEnv(Plugin):\n"
        "    def hook_connect(self, session):\n"
        "        names = sorted(n for n in os.environ if n.startswith(('LISTEN_', 'NOTIFY_')))\n"
        "        self.log_pass(f'systemd variables {names}')\n")
    return plugins


def _prebound():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


def test_systemd_socket_activation(tmp_path):
    sock = _prebound()
    port = sock.getsockname()[1]
    fd = sock.fileno()
    # systemd's side: the socket on fd 3, LISTEN_PID naming the daemon itself
    wrapper = [sys.executable, "-c",
               "import os, sys\n"
               f"os.dup2({fd}, 3)\n"
               f"os.close({fd})\n"
               "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1',"
               " LISTEN_FDNAMES='smtp')\n"
               "os.execv(sys.argv[1], sys.argv[1:])\n"]
    d = Daemon(tmp_path, listen=False, wrapper=wrapper, pass_fds=(fd,),
               plugins=("show_env", "relay", "rcpt_ok"), plugin_dirs=[show_env(tmp_path)])
    sock.close()                     # the daemon has its own copy now
    try:
        assert f"Listening on 127.0.0.1:{port} (fd 3 from systemd)" in d.log()
        assert d.log().count("Listening on") == 1        # nothing else bound
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail("a@sender.example", ["bob@example.test"], b"Subject: s\r\n\r\nx\r\n")
        assert len(maildir_messages(d.maildir)) == 1
        d.wait_log("(connect) show_env: pass, systemd variables []")
    finally:
        d.stop()


def test_listen_pid_of_another_process_is_ignored(tmp_path):
    d = Daemon(tmp_path, extra_env={"LISTEN_PID": "1", "LISTEN_FDS": "1"})
    try:
        assert "from systemd" not in d.log()
        with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as client:
            assert client.noop()[0] == 250
    finally:
        d.stop()


def test_listen_fd_serves_an_inherited_socket(tmp_path):
    sock = _prebound()
    port, fd = sock.getsockname()[1], sock.fileno()
    d = Daemon(tmp_path, listen=False, args=("--listen-fd", str(fd)), pass_fds=(fd,))
    sock.close()
    try:
        assert f"Listening on 127.0.0.1:{port} (fd {fd})" in d.log()
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            assert client.noop()[0] == 250
    finally:
        d.stop()


def test_listen_fd_that_is_no_listening_socket(tmp_path):
    config_dir, _ = site(tmp_path, ["rcpt_ok"])
    read_end, write_end = os.pipe()
    connected = socket.socketpair()
    try:
        result = run_script("--listen-fd", str(read_end), "--config-dir", config_dir,
                            pass_fds=(read_end,))
        assert result.returncode == 1
        assert f"fd {read_end} is not a socket: Socket operation on non-socket" \
            in result.stderr
        fd = connected[0].fileno()
        result = run_script("--listen-fd", str(fd), "--config-dir", config_dir,
                            pass_fds=(fd,))
        assert result.returncode == 1
        assert f"fd {fd} is not a listening TCP socket" in result.stderr
    finally:
        os.close(read_end)
        os.close(write_end)
        for sock in connected:
            sock.close()


def test_systemd_notify_ready_reloading_stopping(tmp_path):
    path = str(tmp_path / "notify")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    listener.settimeout(10)
    try:
        d = Daemon(tmp_path / "d", extra_env={"NOTIFY_SOCKET": path},
                   plugins=("show_env", "relay", "rcpt_ok"), plugin_dirs=[show_env(tmp_path)])
        try:
            assert listener.recv(4096) == f"READY=1\nMAINPID={d.pid}".encode()
            d.signal(signal.SIGHUP)
            assert listener.recv(4096).startswith(b"RELOADING=1\nMONOTONIC_USEC=")
            assert listener.recv(4096) == b"READY=1"
            client = d.connect()
            d.wait_log("(connect) show_env: pass, systemd variables []")
            client.close()
            d.signal(signal.SIGTERM)
            assert listener.recv(4096) == b"STOPPING=1"
            assert d.wait() == 0
        finally:
            d.stop()
    finally:
        listener.close()


def test_notify_socket_forms():
    environ = {"NOTIFY_SOCKET": "@abstract/name"}
    notify = SystemdNotify.from_environment(environ)
    assert notify.address == "\0abstract/name" and environ == {}
    notify.close()
    assert SystemdNotify.from_environment({"NOTIFY_SOCKET": "relative"}) is None
    assert SystemdNotify.from_environment({}) is None


PACKAGING = os.path.join(ROOT, "packaging", "systemd")


def _unit(name):
    sections, section = {}, None
    with open(os.path.join(PACKAGING, name)) as handle:
        for line in handle:
            line = line.strip()
            if line.startswith("["):
                section = sections.setdefault(line.strip("[]"), {})
            elif line and not line.startswith("#"):
                key, _, value = line.partition("=")
                section.setdefault(key, []).append(value)
    return sections


def test_systemd_units_match_the_daemon():
    service, sock = _unit("qpsmtpd.service"), _unit("qpsmtpd.socket")
    assert sock["Socket"]["Accept"] == ["no"]
    assert sock["Socket"]["ListenStream"] == ["25", "587"]
    assert service["Service"]["Type"] == ["notify"]
    assert service["Service"]["KillMode"] == ["mixed"]
    assert service["Service"]["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    [command] = service["Service"]["ExecStart"]
    program, *args = command.split()
    assert program.endswith("/qpsmtpd-forkserver")
    options = qpsmtpd_forkserver.parse_options(args)
    timeout = int(service["Service"]["TimeoutStopSec"][0])
    assert timeout > options.grace_period       # systemd must not kill a graceful stop
    assert not options.listen_address and not options.port   # sockets come from systemd


def test_systemd_units_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.skip("systemd-analyze not installed")
    for name in ("qpsmtpd.service", "qpsmtpd.socket"):
        text = open(os.path.join(PACKAGING, name)).read()
        # verify wants the program to exist
        (tmp_path / name).write_text(text.replace("/usr/local/bin/qpsmtpd-forkserver",
                                                  "/bin/true"))
    result = subprocess.run([analyze, "verify", str(tmp_path / "qpsmtpd.socket"),
                             str(tmp_path / "qpsmtpd.service")],
                            capture_output=True, text=True, timeout=60)
    problems = [line for line in result.stderr.splitlines()
                if "qpsmtpd" in line and "Unit is bound to inactive unit" not in line]
    assert result.returncode == 0 and problems == [], result.stderr
