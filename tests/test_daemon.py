"""The per-connection qpsmtpd under Debian's tcpserver (ucspi-tcp), and the
program's own checks. The daemon, qpsmtpd-forkserver, is tested in
test_forkserver.py."""

import os
import shutil
import smtplib
import subprocess
import sys

import pytest

from conftest import ROOT, maildir_messages
from forkserver_fixtures import free_port, site, wait_for_port

TCPSERVER = shutil.which("tcpserver")
TCPRULES = shutil.which("tcprules")


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
