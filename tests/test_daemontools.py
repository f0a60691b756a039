"""The shipped run and log/run scripts under the real daemontools
(svscan, supervise, multilog, envdir, softlimit from Debian's daemontools)."""

import os
import shutil
import smtplib
import subprocess
import time

import pytest

from conftest import ROOT, write_config
from test_daemon import free_port

SVSCAN = shutil.which("svscan")
pytestmark = pytest.mark.skipif(
    not SVSCAN, reason="daemontools not installed; `make test` installs it as root")


@pytest.fixture
def service(tmp_path):
    """A service directory laid out like an install: run, log/run, config,
    env/, with the program files linked from this tree."""
    scan = tmp_path / "service"
    svc = scan / "qpsmtpd"
    (svc / "log").mkdir(parents=True)
    shutil.copy(os.path.join(ROOT, "run"), svc / "run")
    shutil.copy(os.path.join(ROOT, "log", "run"), svc / "log" / "run")
    os.symlink(os.path.join(ROOT, "qpsmtpd_forkserver.py"), svc / "qpsmtpd_forkserver.py")
    if os.path.isdir(os.path.join(ROOT, ".venv")):
        os.symlink(os.path.join(ROOT, ".venv"), svc / ".venv")
    port = free_port()
    maildir = tmp_path / "maildir"
    write_config(str(svc / "config"), {
        "me": "mx.example.org", "rcpthosts": "example.test", "loglevel": "6",
        "spool_dir": str(tmp_path / "spool") + "/",
        "plugins": ["relay", "rcpt_ok", f"queue/maildir {maildir}"]})
    write_config(str(svc / "env"), {
        "QPSMTPD_LISTEN": "127.0.0.1", "QPSMTPD_PORTS": str(port),
        "QPSMTPD_USER": "\n", "PYTHONPATH": ROOT})
    proc = subprocess.Popen([SVSCAN, str(scan)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    yield svc, port, maildir
    proc.terminate()
    proc.wait(5)
    subprocess.run(["svc", "-dx", str(svc), str(svc / "log")], check=False)
    time.sleep(0.5)


def wait_for(predicate, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_supervised_daemon_logs_to_multilog(service):
    svc, port, maildir = service

    def serving():
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
                return client.noop()[0] == 250
        except OSError:
            return False

    assert wait_for(serving), "the supervised daemon did not start"
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail("a@sender.example", ["bob@example.test"], b"Subject: s\r\n\r\nsupervised\r\n")
    assert len(os.listdir(maildir / "new")) == 1
    current = svc / "log" / "main" / "current"
    assert wait_for(lambda: current.exists() and
                    "dispatching mail FROM:<a@sender.example>" in current.read_text())
    lines = current.read_text().splitlines()
    assert any(line.startswith("@4000") and "Listening on 127.0.0.1:" in line for line in lines)
    assert any("dispatching mail FROM:<a@sender.example>" in line for line in lines)
    status = subprocess.run(["svstat", str(svc)], capture_output=True, text=True).stdout
    assert ": up (pid " in status
    pid_before = int(status.split("pid ")[1].split(")")[0])
    subprocess.run(["svc", "-t", str(svc)], check=True)
    assert wait_for(lambda: "Listening on" in current.read_text().split("cleaning up")[-1])

    def restarted():
        out = subprocess.run(["svstat", str(svc)], capture_output=True, text=True).stdout
        return ": up (pid " in out and int(out.split("pid ")[1].split(")")[0]) != pid_before

    assert wait_for(restarted), "supervise did not restart the daemon after SIGTERM"
    assert wait_for(serving)
