"""auth/auth_checkpassword with a real checkpassword program
(tests/bin/checkpassword reads fd 3 and runs the next program, like qmail's):
success, wrong passwords, temporary failures, timeouts, configuration from
arguments and from config/smtpauth-checkpassword, then the real daemon."""

import os
import smtplib
import subprocess
import time

import pytest

from conftest import ROOT
from tls_fixtures import TLSDaemon, b64

CHECKPASSWORD = os.path.join(ROOT, "tests", "bin", "checkpassword")


@pytest.fixture
def checkpw(tmp_path):
    """A wrapper naming the users file, as a site's vchkpw would know its own."""
    users = tmp_path / "users"
    users.write_bytes(b"alice@example.org:wonder land\nbob@example.org:builder\n"
                      b"utf8@example.org:p\xc3\xa4ss\n")
    wrapper = tmp_path / "checkpw"
    wrapper.write_text(f"#!/bin/sh\nCHECKPASSWORD_USERS={users} exec {CHECKPASSWORD} "
                       '"$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


@pytest.fixture
def client(smtp_session, checkpw):
    def factory(line=None, config=None):
        files = {"auth_failure_delay": "0"}
        files.update(config or {})
        c = smtp_session([line or f"auth/auth_checkpassword checkpw {checkpw} true "
                          "/bin/true"], files)
        assert c.cmd("EHLO client.example.net").code == 250
        return c
    return factory


def plain(user, password):
    return "AUTH PLAIN " + b64(f"\0{user}\0{password}")


def test_the_program_itself_follows_the_interface(checkpw):
    ok = subprocess.run(["/bin/sh", "-c", f'{checkpw} /bin/true 3<&0'],
                        input=b"alice@example.org\0wonder land\0Y123456\0")
    bad = subprocess.run(["/bin/sh", "-c", f'{checkpw} /bin/true 3<&0'],
                         input=b"alice@example.org\0wonder\0Y123456\0")
    assert (ok.returncode, bad.returncode) == (0, 1)


def test_ehlo_offers_plain_and_login(client):
    assert client().cmd("EHLO client.example.net").lines[-1] == "AUTH PLAIN LOGIN"


@pytest.mark.parametrize("user, password", [
    ("alice@example.org", "wonder land"),
    ("utf8@example.org", "päss"),
])
def test_accepted(client, user, password):
    c = client()
    assert c.cmd(plain(user, password)) == \
        (235, [f"2.7.0 PLAIN authentication successful for {user} - auth_checkpassword"])
    assert c.session.connection.notes["authuser"] == user
    assert c.session.connection.relay_client


def test_login_mechanism(client):
    c = client()
    c.cmd("AUTH LOGIN " + b64("bob@example.org"))
    assert c.cmd(b64("builder")).code == 235


@pytest.mark.parametrize("user, password", [
    ("alice@example.org", "wonder"),
    ("alice@example.org", "wonder land\0extra"),
    ("nobody@example.org", "x"),
])
def test_refused(client, user, password):
    c = client()
    reply = c.cmd("AUTH PLAIN " + b64(f"\0{user}\0{password}"))
    assert reply.code == 535
    if "\0" not in password:
        assert reply.lines == [f"5.7.8 PLAIN authentication failed for {user} from "
                               "192.0.2.10"]
        assert c.log_contains(f"exited 1 for {user}")


def test_temporary_failure_gets_454_and_the_program_stderr_is_logged(client):
    c = client()
    assert c.cmd(plain("tempfail@example.org", "x")) == \
        (454, ["4.7.0 Temporary authentication failure - auth_checkpassword - "
               "temporary failure"])
    assert c.log_contains("user database unavailable")
    assert c.log_contains("exited 111 (temporary failure)")


def test_a_slow_program_is_killed(client, checkpw):
    c = client(line=f"auth/auth_checkpassword checkpw {checkpw} timeout 0.5")
    started = time.monotonic()
    assert c.cmd(plain("slow@example.org", "x")).code == 454
    assert time.monotonic() - started < 5
    assert c.log_contains("took longer than 0.5 s")


def test_configuration_file(client, checkpw):
    c = client(line="auth/auth_checkpassword",
               config={"smtpauth-checkpassword": f"{checkpw} /bin/true"})
    assert c.cmd(plain("alice@example.org", "wonder land")).code == 235


def test_sudo_style_line_passes_its_words(client, checkpw, tmp_path):
    # "program args... checkpw true": here env(1) stands in for sudo -C4
    c = client(line="auth/auth_checkpassword",
               config={"smtpauth-checkpassword": f"/usr/bin/env {checkpw} /bin/true"})
    assert c.cmd(plain("alice@example.org", "wonder land")).code == 235


@pytest.mark.parametrize("line, config, log", [
    ("auth/auth_checkpassword", {}, "no checkpassword program"),
    ("auth/auth_checkpassword", {"smtpauth-checkpassword": "/nonexistent/vchkpw /bin/true"},
     "/nonexistent/vchkpw is not executable"),
    ("auth/auth_checkpassword checkpw {text_file}", {}, "text_file is not executable"),
])
def test_misconfiguration_declines(client, tmp_path, line, config, log):
    text_file = tmp_path / "text_file"
    text_file.write_text("not a program\n")
    text_file.chmod(0o644)
    c = client(line=line.format(text_file=text_file), config=config)
    assert c.cmd(plain("alice@example.org", "wonder land")).code == 535
    assert c.log_contains(log)


def test_true_failing_means_refused(client, checkpw):
    c = client(line=f"auth/auth_checkpassword checkpw {checkpw} true /bin/false")
    assert c.cmd(plain("alice@example.org", "wonder land")).code == 535


def test_real_daemon(tmp_path, checkpw):
    daemon = TLSDaemon(tmp_path, [f"auth/auth_checkpassword checkpw {checkpw}", "rcpt_ok"],
                       {"auth_failure_delay": "0"})
    try:
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=10) as smtp:
            smtp.ehlo("client.example.net")
            with pytest.raises(smtplib.SMTPAuthenticationError):
                smtp.login("alice@example.org", "nope")
            smtp.login("alice@example.org", "wonder land")
            assert smtp.sendmail("alice@example.org", ["far@elsewhere.example"],
                                 b"Subject: cp\r\n\r\nx\r\n") == {}
    finally:
        daemon.stop()
    log = daemon.log()
    assert "auth::auth_checkpassword: pass, alice@example.org" in log
    # no tls plugin: the daemon warned once, at start-up, before any session
    warning = log.index("AUTH PLAIN LOGIN is offered but no TLS: passwords would "
                        "cross the network in clear")
    assert warning < log.index("Listening on")
