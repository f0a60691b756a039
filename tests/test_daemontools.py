"""The shipped run and log/run scripts under the real daemontools
(svscan, supervise, multilog, envdir, softlimit, svc, svstat from Debian's
daemontools): logging to log/main/current line by line, svc -h (reload),
svc -t (restart) and svc -d (a graceful stop)."""

import os
import shutil
import smtplib
import subprocess
import time

import pytest

from conftest import ROOT, maildir_messages, write_config
from forkserver_fixtures import SMTPClient, free_port, wait_for

SVSCAN = shutil.which("svscan")
pytestmark = pytest.mark.skipif(
    not SVSCAN, reason="daemontools not installed; `make test` installs it as root")


THREADED = '''"""threaded - test plugin: a worker that starts a thread (as plugins
with helpers and the hook deadline do) must work under run's softlimit."""
import threading
from qpsmtpd.plugin import Plugin


class Threaded(Plugin):
    def hook_connect(self, session):
        done = []
        helper = threading.Thread(target=done.append, args=(1,))
        helper.start()
        helper.join()
        self.log_pass(f"a thread ran: {done == [1]}")
'''


class Service:
    """A service directory laid out like an install: run, log/run, config,
    env/, with the program files linked from this tree."""

    def __init__(self, base):
        scan = base / "service"
        self.dir = scan / "qpsmtpd"
        (self.dir / "log").mkdir(parents=True)
        shutil.copy(os.path.join(ROOT, "run"), self.dir / "run")
        shutil.copy(os.path.join(ROOT, "log", "run"), self.dir / "log" / "run")
        os.symlink(os.path.join(ROOT, "qpsmtpd_forkserver.py"),
                   self.dir / "qpsmtpd_forkserver.py")
        if os.path.isdir(os.path.join(ROOT, ".venv")):
            os.symlink(os.path.join(ROOT, ".venv"), self.dir / ".venv")
        self.port = free_port()
        self.maildir = base / "maildir"
        # ./plugins of the service directory is searched first, as installed
        (self.dir / "plugins").mkdir()
        (self.dir / "plugins" / "threaded.py").write_text(THREADED)
        write_config(str(self.dir / "config"), {
            "me": "mx.example.org", "rcpthosts": "example.test", "loglevel": "6",
            "spool_dir": str(base / "spool") + "/",
            "plugins": ["threaded", "relay", "rcpt_ok", f"queue/maildir {self.maildir}"]})
        write_config(str(self.dir / "env"), {
            "QPSMTPD_LISTEN": "127.0.0.1", "QPSMTPD_PORTS": str(self.port),
            "QPSMTPD_USER": "\n", "QPSMTPD_ARGS": "--grace-period 20",
            "PYTHONPATH": ROOT})
        self.current = self.dir / "log" / "main" / "current"
        self.svscan = subprocess.Popen([SVSCAN, str(scan)], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)

    def log(self):
        return self.current.read_text() if self.current.exists() else ""

    def svc(self, flag):
        subprocess.run(["svc", flag, str(self.dir)], check=True)

    def pid(self):
        """The supervised daemon's pid, or None when it is down."""
        out = subprocess.run(["svstat", str(self.dir)], capture_output=True,
                             text=True).stdout
        if ": up (pid " not in out:
            return None
        return int(out.split("pid ")[1].split(")")[0])

    def serving(self):
        try:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=5) as client:
                return client.noop()[0] == 250
        except OSError:
            return False

    def stop(self):
        self.svscan.terminate()
        self.svscan.wait(5)
        subprocess.run(["svc", "-dx", str(self.dir), str(self.dir / "log")], check=False)
        wait_for(lambda: self.pid() is None, timeout=10)
        time.sleep(0.3)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    svc = Service(tmp_path_factory.mktemp("daemontools"))
    yield svc
    svc.stop()


@pytest.fixture
def up(service):
    """The service, serving."""
    assert wait_for(service.serving, timeout=30), "the supervised daemon did not start"
    return service


def test_supervised_daemon_logs_to_multilog(up):
    with smtplib.SMTP("127.0.0.1", up.port, timeout=10) as client:
        client.sendmail("a@sender.example", ["bob@example.test"],
                        b"Subject: s\r\n\r\nsupervised\r\n")
    assert any(m.endswith(b"\nsupervised\n") for m in maildir_messages(up.maildir))
    assert wait_for(lambda: "dispatching mail FROM:<a@sender.example>" in up.log())
    lines = up.log().splitlines()
    assert any(line.startswith("@4000") and "Listening on 127.0.0.1:" in line
               for line in lines)
    assert all(line.startswith("@4000") for line in lines)
    assert any("Running as user" in line for line in lines)
    assert "(connect) threaded: pass, a thread ran: True" in up.log()


def test_each_line_reaches_the_log_while_the_session_runs(up):
    client = SMTPClient(("127.0.0.1", up.port))
    try:
        assert client.reply()[0] == 220
        assert client.cmd("EHLO live.example.net")[0] == 250
        # the session is still open: the lines are in current already
        assert wait_for(lambda: "dispatching EHLO live.example.net" in up.log(), timeout=3)
        assert "250-mx.example.org Hi" in up.log().split("dispatching EHLO live")[1]
    finally:
        client.close()


def test_svc_h_reloads_without_a_restart(up):
    pid = up.pid()
    before = up.log().count("configuration and plugins reloaded")
    with open(up.dir / "config" / "me", "w") as handle:
        handle.write("reloaded.example.org\n")
    try:
        up.svc("-h")
        assert wait_for(lambda: up.log().count("configuration and plugins reloaded")
                        > before)
        assert up.pid() == pid
        with smtplib.SMTP("127.0.0.1", up.port, timeout=10) as client:
            assert b"reloaded.example.org" in client.ehlo("c.example")[1]
    finally:
        with open(up.dir / "config" / "me", "w") as handle:
            handle.write("mx.example.org\n")


def test_svc_t_restarts_the_daemon(up):
    pid = up.pid()
    up.svc("-t")
    assert wait_for(lambda: up.pid() not in (None, pid), timeout=20), \
        "supervise did not restart the daemon after SIGTERM"
    assert wait_for(up.serving, timeout=20)
    assert "SIGTERM received: not accepting connections" in up.log()


def test_svc_d_lets_the_message_in_flight_land(up):
    client = SMTPClient(("127.0.0.1", up.port))
    try:
        assert client.reply()[0] == 220
        client.start_data()
        client.send("Subject: svc -d\r\n\r\nfirst part\r\n")
        stops = up.log().count("SIGTERM received")
        up.svc("-d")
        assert wait_for(lambda: up.log().count("SIGTERM received") > stops, timeout=5)
        assert up.pid() is not None          # waiting for this session
        client.send("last part\r\n.\r\n")
        assert client.reply() == (250, ["2.0.0 Queued!"])
        assert client.reply()[0] == 421
        assert client.closed()
    finally:
        client.close()
    assert wait_for(lambda: up.pid() is None, timeout=10)
    assert any(m.endswith(b"\nfirst part\nlast part\n") for m in maildir_messages(up.maildir))
    up.svc("-u")
    assert wait_for(up.serving, timeout=20)
