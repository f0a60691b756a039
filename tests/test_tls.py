"""tls plugin: STARTTLS and SMTPS over real sockets, with certificates the
test makes with openssl (tests/tls_fixtures.py): the offer, the handshake,
the fresh session after it, the STARTTLS command-injection case, AUTH only
after TLS, failed and aborted handshakes, expired and self-signed
certificates, protocol and cipher settings, client certificates; then the
real forkserver with smtplib, swaks and openssl s_client."""

import os
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import time

import pytest

from conftest import ROOT, maildir_messages
from qpsmtpd.plugin import PluginError
from tls_fixtures import TLSDaemon, b64, client_context, make_certs, starttls, tls_line

ACCOUNTS = ["good@example.com:good_pass"]
GOOD_PLAIN = b64("\0good@example.com\0good_pass")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def queue_dir(tmp_path):
    return tmp_path / "queue"


@pytest.fixture
def session(plugin_session, certs, queue_dir):
    """Factory: a session with tls (the test server certificate),
    auth_flat_file, rcpt_ok and a capturing queue."""
    def factory(tls=None, plugins=("auth/auth_flat_file",), config=None, **kwargs):
        files = {"flat_auth_pw": ACCOUNTS, "rcpthosts": "example.test",
                 "auth_failure_delay": "0"}
        files.update(config or {})
        client = plugin_session([tls or tls_line(certs)] + list(plugins)
                                + ["rcpt_ok", f"capture {queue_dir}"], files, **kwargs)
        return client
    return factory


def queued(queue_dir):
    return [(queue_dir / name).read_bytes()
            for name in sorted(os.listdir(queue_dir)) if name.endswith(".eml")]


def upgrade(client, context=None):
    """EHLO, STARTTLS, handshake; returns the TLS socket."""
    assert client.cmd("EHLO client.example.net").code == 250
    assert client.cmd("STARTTLS") == (220, ["2.0.0 Go ahead with TLS"])
    return starttls(client, context)


def drained(client):
    """Everything the server still sends until it closes (a reset counts as
    closed); asserts no SMTP reply is among it (a TLS alert may be)."""
    data = b""
    try:
        while True:
            chunk = client.sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass
    assert not re.search(rb"(^|\n)\d{3}[ -]", data), data
    return data


def wait_for(predicate, timeout=5):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline
        time.sleep(0.02)


# -- offer and handshake ------------------------------------------------------------

def test_starttls_is_offered_and_auth_withheld_until_tls(session):
    client = session()
    ehlo = client.cmd("EHLO client.example.net")
    assert ehlo.lines[1:] == ["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "STARTTLS"]
    assert client.cmd("STARTTLS") == (220, ["2.0.0 Go ahead with TLS"])
    tls = starttls(client)
    assert tls.version() in ("TLSv1.2", "TLSv1.3")
    ehlo = client.cmd("EHLO client.example.net")
    assert "STARTTLS" not in ehlo.lines
    assert ehlo.lines[-1] == "AUTH PLAIN LOGIN CRAM-MD5"
    assert client.cmd(f"AUTH PLAIN {GOOD_PLAIN}").code == 235


def test_session_starts_afresh_after_starttls(session, queue_dir):
    client = session()
    assert client.cmd("EHLO old.example.net").code == 250
    assert client.cmd("MAIL FROM:<a@example.com>").code == 250
    old = client.session.connection
    old.notes["kept"] = "yes"
    assert client.cmd("STARTTLS").code == 220
    starttls(client)
    assert client.cmd("RCPT TO:<rcpt@example.test>") == (503, ["Use MAIL before RCPT"])
    assert client.cmd("MAIL FROM:<a@example.com>") == (503, ["please say hello first ..."])
    connection = client.session.connection
    assert connection is not old
    assert (connection.hello, connection.hello_host) == (None, None)
    assert connection.notes["kept"] == "yes"
    assert client.cmd("EHLO new.example.net").code == 250
    assert client.cmd("MAIL FROM:<a@example.com>").code == 250
    assert client.cmd("RCPT TO:<rcpt@example.test>").code == 250
    assert client.cmd("DATA").code == 354
    client.send("Subject: tls\r\n\r\nsecret body\r\n.\r\n")
    assert client.reply().code == 250
    message = queued(queue_dir)[0]
    cipher = connection.tls["cipher"]
    assert re.search(rb"\(HELO new\.example\.net\) \(192\.0\.2\.10\)\n by mx\.example\.org "
                     rb"\(qpsmtpd/[^)]+\) with ESMTPS \(" + re.escape(cipher.encode())
                     + rb" encrypted\); ", message), message[:400]
    assert message.endswith(b"Subject: tls\n\nsecret body\n")


def test_tls_facts_in_connection_and_notes_and_log(session):
    client = session()
    tls = upgrade(client)
    assert client.cmd("NOOP").code == 250
    connection = client.session.connection
    facts = connection.tls
    assert facts["protocol"] == tls.version()
    assert facts["cipher"] == tls.cipher()[0]
    assert facts["bits"] == tls.cipher()[2]
    assert facts["peer_subject"] is None
    notes = connection.notes
    assert (notes["tls_enabled"], notes["tls_protocol"], notes["tls_cipher"]) == \
        (1, tls.version(), tls.cipher()[0])
    assert isinstance(notes["tls_socket"], ssl.SSLSocket)
    assert client.log_contains(f"tls: pass, {tls.version()} {tls.cipher()[0]} "
                               f"({tls.cipher()[2]} bits)")


def test_auth_and_tls_give_esmtpsa(session, queue_dir):
    client = session()
    upgrade(client)
    assert client.cmd("EHLO client.example.net").code == 250
    assert client.cmd(f"AUTH PLAIN {GOOD_PLAIN}").code == 235
    assert client.cmd("MAIL FROM:<good@example.com>").code == 250
    assert client.cmd("RCPT TO:<rcpt@elsewhere.example>").code == 250
    assert client.cmd("DATA").code == 354
    client.send("Subject: relay\r\n\r\nbody\r\n.\r\n")
    assert client.reply().code == 250
    message = queued(queue_dir)[0]
    assert message.startswith(b"Authentication-Results: mx.example.org; auth=pass "
                              b"(plain) smtp.auth=good@example.com\n")
    assert re.search(rb" with ESMTPSA \([^)]+ encrypted\); ", message)


# -- STARTTLS command injection (CVE-2011-0411) ---------------------------------------

def test_plaintext_after_starttls_is_never_answered(session):
    client = session(plugins=["auth/auth_flat_file", "returns reset_transaction DECLINED"])
    assert client.cmd("EHLO client.example.net").code == 250
    client.send("STARTTLS\r\nRSET\r\n")          # one write, one packet
    assert client.reply() == (220, ["2.0.0 Go ahead with TLS"])
    tls = starttls(client)
    tls.settimeout(0.5)
    with pytest.raises(socket.timeout):
        client.file.readline()                    # no answer to the smuggled RSET
    tls.settimeout(10)
    client.file = tls.makefile("rb")
    assert client.cmd("NOOP") == (250, ["OK"])    # the first reply read is NOOP's
    # one reset_transaction (STARTTLS's own), none for the RSET
    assert client.session.connection.notes["returns_calls"] == [()]
    assert client.log_contains("discarded 6 bytes sent after STARTTLS before the handshake")
    assert not any("dispatching RSET" in line for line in client.log)


def test_plaintext_reaching_the_handshake_fails_it(session):
    client = session()
    assert client.cmd("EHLO client.example.net").code == 250
    assert client.cmd("STARTTLS").code == 220
    client.send("RSET\r\nQUIT\r\n")               # plaintext where TLS must start
    drained(client)
    client.thread.join(5)
    assert not client.thread.is_alive()
    assert client.log_contains("tls: fail, TLS handshake failed (STARTTLS)")
    assert not any("dispatching RSET" in line for line in client.log)


# -- refusals -------------------------------------------------------------------------

def test_starttls_with_parameters_gets_501(session):
    client = session()
    assert client.cmd("EHLO client.example.net").code == 250
    assert client.cmd("STARTTLS now") == \
        (501, ["5.5.4 Syntax error (no parameters allowed)"])
    assert client.cmd("NOOP").code == 250


def test_starttls_before_ehlo_is_unrecognized(session):
    client = session()
    assert client.cmd("STARTTLS") == (500, ["Unrecognized command"])


def test_second_starttls_is_refused(session):
    client = session()
    upgrade(client)
    assert client.cmd("EHLO client.example.net").code == 250
    assert client.cmd("STARTTLS") == (500, ["5.5.1 TLS already active"])
    assert client.cmd("NOOP").code == 250


def test_starttls_is_no_junk_for_count_unrecognized_commands(session, certs):
    # listed after the junk counter, tls still answers STARTTLS first
    client = session(tls="count_unrecognized_commands 1",
                     plugins=[tls_line(certs), "auth/auth_flat_file"])
    assert client.cmd("EHLO client.example.net").code == 250
    assert client.cmd("STARTTLS").code == 220


# -- tls_before_auth ----------------------------------------------------------------

def test_auth_before_starttls_is_refused_and_cannot_be_bypassed(session):
    client = session()
    ehlo = client.cmd("EHLO client.example.net")
    assert not any(line.startswith("AUTH") for line in ehlo.lines)
    refused = (503, ["5.7.0 SSL/TLS required before AUTH"])
    assert client.cmd(f"AUTH PLAIN {GOOD_PLAIN}") == refused
    assert client.cmd("AUTH LOGIN") == refused
    # the original's flag lived in the transaction: RSET or MAIL dropped it
    assert client.cmd("RSET").code == 250
    assert client.cmd(f"AUTH PLAIN {GOOD_PLAIN}") == refused
    assert client.cmd("EHLO again.example.net").code == 250
    assert client.cmd(f"AUTH PLAIN {GOOD_PLAIN}") == refused
    assert not client.session.connection.relay_client


def test_tls_before_auth_off_offers_auth_in_clear(session):
    client = session(config={"tls_before_auth": "0"})
    ehlo = client.cmd("EHLO client.example.net")
    assert ehlo.lines[-2:] == ["STARTTLS", "AUTH PLAIN LOGIN CRAM-MD5"]
    assert client.cmd(f"AUTH PLAIN {GOOD_PLAIN}").code == 235


def test_starttls_forgets_a_plaintext_auth(session):
    client = session(config={"tls_before_auth": "0"})
    assert client.cmd("EHLO client.example.net").code == 250
    assert client.cmd(f"AUTH PLAIN {GOOD_PLAIN}").code == 235
    assert client.session.connection.relay_client
    assert client.cmd("STARTTLS").code == 220
    starttls(client)
    assert client.cmd("EHLO client.example.net").code == 250
    connection = client.session.connection
    assert (connection.auth_user, connection.relay_client) == (None, False)
    assert client.cmd(f"AUTH PLAIN {GOOD_PLAIN}").code == 235


def test_starttls_keeps_relay_client_from_the_ip(session):
    client = session(relay_client=True)
    upgrade(client)
    assert client.cmd("EHLO client.example.net").code == 250
    assert client.session.connection.relay_client


# -- failed handshakes ----------------------------------------------------------------

def test_client_aborting_the_handshake(session):
    client = session(plugins=["auth/auth_flat_file", "returns disconnect DECLINED",
                              "returns post-connection DECLINED"])
    assert client.cmd("EHLO client.example.net").code == 250
    assert client.cmd("STARTTLS").code == 220
    client.file.close()
    client.sock.close()
    client.thread.join(5)
    assert not client.thread.is_alive()
    assert client.log_contains("tls: fail, TLS handshake failed (STARTTLS)")
    assert client.session.connection.notes["returns_calls"] == [(), ()]
    assert client.session.disconnected


def test_client_refusing_the_certificate(session, certs):
    client = session()
    assert client.cmd("EHLO client.example.net").code == 250
    assert client.cmd("STARTTLS").code == 220
    strict = client_context(verify=True)             # system CAs: ours is unknown
    with pytest.raises(ssl.SSLCertVerificationError):
        starttls(client, strict)
    client.thread.join(5)
    assert client.log_contains("tls: fail, TLS handshake failed (STARTTLS): "
                               "tlsv1 alert unknown ca")


def test_handshake_timeout(session, certs):
    client = session(tls=tls_line(certs, extra="handshake_timeout 0.5"))
    assert client.cmd("EHLO client.example.net").code == 250
    assert client.cmd("STARTTLS").code == 220
    started = time.monotonic()
    assert client.closed()                       # nothing sent: the server gives up
    assert time.monotonic() - started < 4
    client.thread.join(5)
    assert client.log_contains("tls: fail, TLS handshake failed (STARTTLS): timed out")


def test_verifying_client_accepts_the_certificate_from_our_ca(session, certs):
    client = session()
    assert client.cmd("EHLO client.example.net").code == 250
    assert client.cmd("STARTTLS").code == 220
    tls = starttls(client, client_context(cafile=certs.ca, verify=True))
    assert tls.getpeercert()["subject"] == ((("commonName", "mx.example.org"),),)
    assert client.cmd("EHLO client.example.net").code == 250


def test_expired_certificate(session, make_app, certs):
    line = tls_line(certs, cert=certs.expired_crt)
    app = make_app([line])
    assert any("certificate " + certs.expired_crt + " expired on Feb  1 00:00:00 2020 GMT"
               in entry for entry in app.captured_log)
    client = session(tls=line)
    assert client.cmd("EHLO client.example.net").code == 250
    assert client.cmd("STARTTLS").code == 220
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate has expired"):
        starttls(client, client_context(cafile=certs.ca, verify=True))
    client.thread.join(5)
    assert client.log_contains("tls: fail, TLS handshake failed (STARTTLS): "
                               "sslv3 alert certificate expired")
    # an opportunistic client (most MTAs) does not check, and gets through
    other = session(tls=line)
    upgrade(other)
    assert other.cmd("EHLO client.example.net").code == 250


def test_self_signed_certificate(session, certs):
    line = tls_line(certs, cert=certs.selfsigned_crt, key=certs.selfsigned_key)
    client = session(tls=line)
    assert client.cmd("EHLO client.example.net").code == 250
    assert client.cmd("STARTTLS").code == 220
    with pytest.raises(ssl.SSLCertVerificationError, match="self.signed certificate"):
        starttls(client, client_context(cafile=certs.ca, verify=True))
    trusting = session(tls=line)
    assert trusting.cmd("EHLO client.example.net").code == 250
    assert trusting.cmd("STARTTLS").code == 220
    starttls(trusting, client_context(cafile=certs.selfsigned_crt, verify=True))
    assert trusting.cmd("EHLO client.example.net").code == 250


# -- configuration ----------------------------------------------------------------------

def test_missing_certificate_leaves_the_plugin_inactive(plugin_session, tmp_path):
    client = plugin_session([f"tls {tmp_path}/none.crt {tmp_path}/none.key",
                             "auth/auth_flat_file"], {"flat_auth_pw": ACCOUNTS})
    ehlo = client.cmd("EHLO client.example.net")
    assert "STARTTLS" not in ehlo.lines
    assert ehlo.lines[-1] == "AUTH PLAIN LOGIN CRAM-MD5"   # no TLS at all: as qpsmtpd
    assert client.cmd("STARTTLS") == (500, ["5.5.1 Unrecognized command"])
    assert client.log_contains("tls: Cannot locate cert/key!  Run plugins/tls_cert to "
                               "generate")
    assert client.log_contains("is offered but no TLS: passwords would cross the "
                               "network in clear")


def test_default_files_from_the_ssl_directory(make_app, certs, tmp_path, monkeypatch):
    ssl_dir = tmp_path / "config" / "ssl"
    ssl_dir.mkdir(parents=True)
    shutil.copy(certs.server_crt, ssl_dir / "qpsmtpd-server.crt")
    shutil.copy(certs.server_key, ssl_dir / "qpsmtpd-server.key")
    monkeypatch.chdir(tmp_path)
    app = make_app(["tls"])
    plugin = app.dispatcher.plugins[-1]
    assert not getattr(plugin, "_disabled", False)
    assert any("TLS ready with " + str(ssl_dir / "qpsmtpd-server.crt") in line
               for line in app.captured_log)


@pytest.mark.parametrize("value, minimum, maximum", [
    (None, "TLSv1_2", "MAXIMUM_SUPPORTED"),
    ("SSLv23:!SSLv2:!SSLv3", "TLSv1", "TLSv1_3"),
    ("TLSv1.2:TLSv1.3", "TLSv1_2", "TLSv1_3"),
    ("TLS:!TLSv1:!TLSv1_1", "TLSv1_2", "TLSv1_3"),
    ("TLSv1_2", "TLSv1_2", "TLSv1_2"),
    ("tlsv13", "TLSv1_3", "TLSv1_3"),
])
def test_protocol_range(value, minimum, maximum):
    from qpsmtpd.dispatch import _import_file
    module = _import_file(os.path.join(ROOT, "plugins", "tls.py"), "tls_under_test")
    low, high = module.protocol_range(value)
    assert (low.name, high.name) == (minimum, maximum)


@pytest.mark.parametrize("files, message", [
    ({"tls_protocols": "SSLv3"}, "allows no TLS version"),
    ({"tls_protocols": "TLSv9"}, "unknown protocol 'TLSv9'"),
    ({"tls_ciphers": "NOTHING-AT-ALL"}, "selects no cipher"),
])
def test_bad_settings_stop_the_start(make_app, certs, files, message):
    with pytest.raises(PluginError, match=message):
        make_app([tls_line(certs)], files)


@pytest.mark.parametrize("extra, message", [
    ("client_cert maybe", "client_cert must be none, optional or required"),
    ("smtps_ports 465,x", "'x' is not a port"),
    ("handshake_timeout soon", "handshake_timeout must be seconds"),
    ("smtps_ports", "Bad arguments"),
])
def test_bad_arguments_stop_the_start(make_app, certs, extra, message):
    with pytest.raises(PluginError, match=message):
        make_app([tls_line(certs, extra=extra)])


def test_key_not_matching_the_certificate_stops_the_start(make_app, certs):
    with pytest.raises(PluginError, match="cannot use certificate"):
        make_app([f"tls {certs.server_crt} {certs.selfsigned_key}"])


def test_protocol_minimum_is_enforced(session, certs):
    client = session(config={"tls_protocols": "TLSv1.3"})
    assert client.cmd("EHLO client.example.net").code == 250
    assert client.cmd("STARTTLS").code == 220
    with pytest.raises(ssl.SSLError):
        starttls(client, client_context(maximum=ssl.TLSVersion.TLSv1_2))
    other = session(config={"tls_protocols": "TLSv1_2"})
    tls = upgrade(other)
    assert tls.version() == "TLSv1.2"
    assert other.cmd("NOOP").code == 250


def test_client_certificate_subject_is_recorded(session, certs):
    client = session(tls=tls_line(certs, extra="client_cert optional"))
    upgrade(client, client_context(certfile=certs.client_crt, keyfile=certs.client_key))
    assert client.cmd("EHLO client.example.net").code == 250
    connection = client.session.connection
    assert connection.tls["peer_subject"] == "/O=Example/CN=client.example.net"
    assert connection.tls["peer_issuer"] == "/CN=Test CA"
    assert connection.notes["tls_peer_subject"] == "/O=Example/CN=client.example.net"
    assert client.log_contains("client certificate /O=Example/CN=client.example.net")
    without = session(tls=tls_line(certs, extra="client_cert optional"))
    upgrade(without)
    assert without.cmd("EHLO client.example.net").code == 250
    assert without.session.connection.tls["peer_subject"] is None


def test_client_certificate_required_and_unknown(session, certs):
    client = session(tls=tls_line(certs, extra="client_cert required"))
    assert client.cmd("EHLO client.example.net").code == 250
    assert client.cmd("STARTTLS").code == 220
    # with TLS 1.3 the server's verdict arrives after the client's side of
    # the handshake has finished: it shows on the first read
    try:
        tls = starttls(client, client_context(certfile=certs.stranger_crt,
                                              keyfile=certs.stranger_key))
        tls.sendall(b"NOOP\r\n")
        answer = client.file.readline()
    except (ssl.SSLError, ConnectionError):
        answer = b""
    assert answer == b""                      # no SMTP reply for a stranger
    client.thread.join(5)
    assert client.log_contains("TLS handshake failed (STARTTLS)")


# -- SMTPS (implicit TLS) ----------------------------------------------------------------

def test_smtps_handshake_comes_before_the_greeting(session, certs):
    client = session(local_port=465, read_greeting=False)
    tls = client_context().wrap_socket(client.sock, server_hostname="mx.example.org")
    client.sock, client.file = tls, tls.makefile("rb")
    greeting = client.reply()
    assert greeting.code == 220 and "ESMTP" in greeting.text
    ehlo = client.cmd("EHLO client.example.net")
    assert "STARTTLS" not in ehlo.lines
    assert ehlo.lines[-1] == "AUTH PLAIN LOGIN CRAM-MD5"
    assert client.cmd(f"AUTH PLAIN {GOOD_PLAIN}").code == 235
    assert client.session.connection.tls["protocol"] == tls.version()


def test_smtps_port_from_the_argument(session, certs):
    client = session(tls=tls_line(certs, extra="smtps_ports 10465,20465"),
                     local_port=20465, read_greeting=False)
    tls = client_context().wrap_socket(client.sock, server_hostname="mx.example.org")
    client.sock, client.file = tls, tls.makefile("rb")
    assert client.reply().code == 220
    plain = session(tls=tls_line(certs, extra="smtps_ports none"), local_port=465)
    assert plain.greeting.code == 220            # port 465 is plain SMTP then


def test_smtps_with_a_plaintext_client(session):
    client = session(local_port=465, read_greeting=False,
                     plugins=["auth/auth_flat_file", "returns disconnect DECLINED"])
    client.send("EHLO client.example.net\r\n")
    drained(client)                               # no greeting, no plaintext reply
    client.thread.join(5)
    assert client.log_contains("tls: fail, TLS handshake failed (SMTPS)")
    assert client.session.connection.notes["returns_calls"] == [()]


# -- the real daemon -------------------------------------------------------------------

@pytest.fixture
def tls_daemon(tmp_path, certs):
    daemons = []

    def factory(plugins=None, config=None):
        plugins = plugins or [tls_line(certs, extra="smtps_ports {smtps_port}"),
                              "auth/auth_flat_file", "auth/authdeny", "rcpt_ok"]
        files = {"flat_auth_pw": ACCOUNTS, "auth_failure_delay": "0.2"}
        files.update(config or {})
        daemon = TLSDaemon(tmp_path, plugins, files)
        daemons.append(daemon)
        return daemon
    yield factory
    for daemon in daemons:
        daemon.stop()


def test_daemon_smtplib_starttls_login_and_smtps(tls_daemon, certs):
    daemon = tls_daemon()
    context = client_context(cafile=certs.ca, verify=True)
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=10) as client:
        client.ehlo("client.example.net")
        assert client.has_extn("starttls") and not client.has_extn("auth")
        code, _ = client.docmd("AUTH", "PLAIN " + GOOD_PLAIN)
        assert code == 503
        client.starttls(context=context)     # checks the SAN IP:127.0.0.1
        client.ehlo("client.example.net")
        assert client.esmtp_features["auth"].strip() == "PLAIN LOGIN CRAM-MD5"
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.login("good@example.com", "wrong")
        assert refused.value.smtp_code == 535
        client.login("good@example.com", "good_pass")
        assert client.sendmail("good@example.com", ["far@elsewhere.example"],
                               b"Subject: via starttls\r\n\r\nhello\r\n") == {}
    with smtplib.SMTP_SSL("127.0.0.1", daemon.smtps_port, timeout=10,
                          context=client_context()) as client:
        client.ehlo("client.example.net")
        client.login("good@example.com", "good_pass")
        assert client.sendmail("good@example.com", ["far@elsewhere.example"],
                               b"Subject: via smtps\r\n\r\nhello\r\n") == {}
    assert "in clear" not in daemon.log()
    wait_for(lambda: len(maildir_messages(daemon.maildir)) == 2)
    for message in maildir_messages(daemon.maildir):
        assert b"Authentication-Results: mx.example.org; auth=pass (" in message
        assert re.search(rb" with ESMTPSA \([^)]+ encrypted\); ", message)


def test_daemon_survives_aborted_and_failed_handshakes(tls_daemon):
    daemon = tls_daemon()
    raw = socket.create_connection(("127.0.0.1", daemon.port), timeout=5)
    raw.recv(1024)
    raw.sendall(b"EHLO client.example.net\r\n")
    time.sleep(0.2)
    raw.recv(4096)
    raw.sendall(b"STARTTLS\r\n")
    assert raw.recv(1024).startswith(b"220 2.0.0 Go ahead with TLS")
    raw.sendall(b"\x16\x03\x01\x00\x05hello")   # a broken ClientHello, then gone
    raw.close()
    smtps = socket.create_connection(("127.0.0.1", daemon.smtps_port), timeout=5)
    smtps.sendall(b"EHLO plaintext.example\r\n")
    try:
        assert not smtps.recv(1024).startswith(b"220")   # no greeting in clear
    except ConnectionResetError:
        pass
    smtps.close()
    daemon.wait_for_log("TLS handshake failed (STARTTLS)")
    daemon.wait_for_log("TLS handshake failed (SMTPS)")
    with smtplib.SMTP_SSL("127.0.0.1", daemon.smtps_port, timeout=10,
                          context=client_context()) as client:
        assert client.noop()[0] == 250
    time.sleep(0.3)
    log = daemon.log()
    assert "worker failed" not in log and "killed by signal" not in log
    assert "Traceback" not in log
    assert daemon.proc.poll() is None


TCPSERVER = shutil.which("tcpserver")


@pytest.mark.skipif(not TCPSERVER, reason="tcpserver not installed (Debian ucspi-tcp)")
def test_smtps_under_tcpserver(tmp_path, certs):
    """The per-connection program learns the port from TCPLOCALPORT."""
    from conftest import write_config
    from tls_fixtures import free_port
    port = free_port()
    config_dir = tmp_path / "config"
    write_config(str(config_dir), {
        "me": "mx.example.org", "spool_dir": str(tmp_path / "spool") + "/",
        "loglevel": "6", "flat_auth_pw": ACCOUNTS,
        "plugins": [tls_line(certs, extra=f"smtps_ports {port}"), "auth/auth_flat_file"]})
    log = open(tmp_path / "tcpserver.log", "wb")
    proc = subprocess.Popen([TCPSERVER, "-R", "-H", "-l", "localhost", "127.0.0.1",
                             str(port), sys.executable, "-m", "qpsmtpd", "--config-dir",
                             str(config_dir)], stderr=log, cwd=str(tmp_path),
                            env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.time() < deadline and proc.poll() is None
                time.sleep(0.05)
        with smtplib.SMTP_SSL("127.0.0.1", port, timeout=10,
                              context=client_context(cafile=certs.ca, verify=True)) as c:
            c.ehlo("client.example.net")
            assert c.esmtp_features["auth"].strip() == "PLAIN LOGIN CRAM-MD5"
            c.login("good@example.com", "good_pass")
    finally:
        proc.terminate()
        proc.wait(10)
    assert "tls: pass, TLSv1.3" in (tmp_path / "tcpserver.log").read_text()


SWAKS = shutil.which("swaks")
OPENSSL = shutil.which("openssl")


@pytest.mark.skipif(not SWAKS, reason="swaks not installed (Debian package swaks)")
def test_swaks_tls_auth(tls_daemon):
    daemon = tls_daemon()
    result = subprocess.run(
        [SWAKS, "--server", "127.0.0.1", "--port", str(daemon.port), "--tls",
         "--auth", "LOGIN", "--auth-user", "good@example.com", "--auth-password",
         "good_pass", "--helo", "client.example.net", "--from", "good@example.com",
         "--to", "far@elsewhere.example", "--header", "Subject: swaks"],
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<-  220 2.0.0 Go ahead with TLS" in result.stdout
    assert "TLS started with cipher" in result.stdout
    assert "<~  235 2.7.0 LOGIN authentication successful for good@example.com" \
        in result.stdout
    assert "<~  250 2.0.0 Queued!" in result.stdout
    wait_for(lambda: maildir_messages(daemon.maildir))
    assert b"Subject: swaks" in maildir_messages(daemon.maildir)[0]


@pytest.mark.skipif(not OPENSSL, reason="openssl not installed (Debian package openssl)")
def test_openssl_s_client_starttls(tls_daemon, certs):
    daemon = tls_daemon()
    session_text = ("EHLO client.example.net\nAUTH PLAIN " + GOOD_PLAIN +
                    "\nMAIL FROM:<good@example.com>\nRCPT TO:<far@elsewhere.example>\n"
                    "DATA\nSubject: s_client\n\nbody\n.\nQUIT\n")
    result = subprocess.run(
        [OPENSSL, "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{daemon.port}",
         "-CAfile", certs.ca, "-verify_return_error", "-crlf", "-quiet",
         "-verify_hostname", "mx.example.org"],
        input=session_text, capture_output=True, text=True, timeout=30)
    out = result.stdout
    assert "verify return:1" in result.stderr
    assert "235 2.7.0 PLAIN authentication successful" in out
    assert "250 2.0.0 Queued!" in out and "221 2.0.0 mx.example.org closing connection" in out
    wait_for(lambda: maildir_messages(daemon.maildir))
    assert b"Subject: s_client" in maildir_messages(daemon.maildir)[0]


@pytest.mark.skipif(not OPENSSL, reason="openssl not installed (Debian package openssl)")
def test_openssl_s_client_smtps(tls_daemon):
    daemon = tls_daemon()
    result = subprocess.run(
        [OPENSSL, "s_client", "-connect", f"127.0.0.1:{daemon.smtps_port}", "-crlf",
         "-quiet"], input="EHLO client.example.net\nQUIT\n", capture_output=True,
        text=True, timeout=30)
    assert result.stdout.startswith("220 mx.example.org ESMTP")
    assert "250 AUTH PLAIN LOGIN CRAM-MD5" in result.stdout


# -- plugins/tls_cert ---------------------------------------------------------------------

@pytest.mark.skipif(not OPENSSL, reason="openssl not installed (Debian package openssl)")
def test_tls_cert_script_makes_files_the_plugin_uses(tmp_path, session):
    script = os.path.join(ROOT, "plugins", "tls_cert")
    out = tmp_path / "made"
    result = subprocess.run([sys.executable, script, "--dir", str(out), "-CN",
                             "mx.example.org", "--alt-name", "127.0.0.1", "-O", "Example"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    names = sorted(os.listdir(out))
    assert names == ["qpsmtpd-ca.crt", "qpsmtpd-ca.key", "qpsmtpd-server.crt",
                     "qpsmtpd-server.key"]
    assert os.stat(out / "qpsmtpd-server.key").st_mode & 0o777 == 0o600
    again = subprocess.run([sys.executable, script, "--dir", str(out)],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "use --force to replace" in again.stderr
    client = session(tls=f"tls {out}/qpsmtpd-server.crt {out}/qpsmtpd-server.key")
    assert client.cmd("EHLO client.example.net").code == 250
    assert client.cmd("STARTTLS").code == 220
    tls = starttls(client, client_context(cafile=str(out / "qpsmtpd-ca.crt"), verify=True))
    assert dict(x[0] for x in tls.getpeercert()["subject"])["organizationName"] == "Example"
