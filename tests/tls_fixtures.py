"""Certificates and TLS helpers for the TLS and AUTH tests.

``make_certs(directory)`` makes, with the openssl program: a test CA; a
server certificate it signed for mx.example.org, localhost and 127.0.0.1;
the same key in a certificate that expired in 2020; a self-signed server
certificate; a client certificate signed by the CA; and a client certificate
from a CA the server does not know. Tests skip when openssl is missing.

``starttls(client, context)`` upgrades a ``conftest.Client`` after the 220;
``client_context(...)`` builds the client's SSL context; ``cram_md5`` and
``b64`` compute AUTH responses; ``start_daemon`` starts the real forkserver
on a plain port and an SMTPS port.
"""

import base64
import hashlib
import hmac
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from conftest import ROOT, write_config

OPENSSL = shutil.which("openssl")

_CA_CONFIG = """\
[ ca ]
default_ca = local
[ local ]
database = ./index.txt
new_certs_dir = .
serial = ./serial
default_md = sha256
policy = anything
copy_extensions = copy
unique_subject = no
[ anything ]
commonName = supplied
"""


def _openssl(cwd, *args):
    result = subprocess.run([OPENSSL, *args], cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def make_certs(d):
    """Write the test certificates into the directory ``d`` (a Path);
    returns their paths. Skips the calling test when openssl is missing."""
    if not OPENSSL:
        pytest.skip("openssl program not installed (Debian package openssl)")
    run = lambda *args: _openssl(str(d), *args)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
        "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=Test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    san = "subjectAltName=DNS:mx.example.org,DNS:localhost,IP:127.0.0.1"
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
        "-out", "server.csr", "-subj", "/CN=mx.example.org", "-addext", san)
    (d / "server.ext").write_text(san.replace("=", " = ", 1) + "\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "365", "-extfile", "server.ext", "-out", "server.crt")
    # openssl x509 cannot back-date; openssl ca can.
    (d / "ca.cnf").write_text(_CA_CONFIG)
    (d / "index.txt").write_text("")
    (d / "serial").write_text("1000\n")
    run("ca", "-batch", "-config", "ca.cnf", "-cert", "ca.crt", "-keyfile", "ca.key",
        "-in", "server.csr", "-out", "expired.crt", "-notext",
        "-startdate", "20200101000000Z", "-enddate", "20200201000000Z")
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "365",
        "-keyout", "selfsigned.key", "-out", "selfsigned.crt",
        "-subj", "/CN=mx.example.org", "-addext", san)
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key",
        "-out", "client.csr", "-subj", "/O=Example/CN=client.example.net")
    run("x509", "-req", "-in", "client.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "365", "-out", "client.crt")
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "365",
        "-keyout", "stranger.key", "-out", "stranger.crt", "-subj", "/CN=stranger")
    return SimpleNamespace(
        dir=d, ca=str(d / "ca.crt"),
        server_crt=str(d / "server.crt"), server_key=str(d / "server.key"),
        expired_crt=str(d / "expired.crt"),
        selfsigned_crt=str(d / "selfsigned.crt"), selfsigned_key=str(d / "selfsigned.key"),
        client_crt=str(d / "client.crt"), client_key=str(d / "client.key"),
        stranger_crt=str(d / "stranger.crt"), stranger_key=str(d / "stranger.key"))


def tls_line(certs, cert=None, key=None, extra=""):
    """A ``config/plugins`` line for the tls plugin with the test files."""
    line = f"tls {cert or certs.server_crt} {key or certs.server_key} {certs.ca}"
    return f"{line} {extra}".rstrip()


def client_context(cafile=None, verify=False, certfile=None, keyfile=None,
                   maximum=None, minimum=None):
    """A client context: no verification unless ``verify`` (then against
    ``cafile``, host name mx.example.org checked by the caller)."""
    if verify:
        context = ssl.create_default_context(cafile=cafile)
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if certfile:
        context.load_cert_chain(certfile, keyfile)
    if maximum:
        context.maximum_version = maximum
    if minimum:
        context.minimum_version = minimum
    return context


def starttls(client, context=None, server_hostname="mx.example.org"):
    """Wrap ``client``'s socket after ``220 Go ahead with TLS``; the Client
    then speaks through TLS. Returns the SSL socket."""
    context = context or client_context()
    client.file.close()
    tls = context.wrap_socket(client.sock, server_hostname=server_hostname)
    client.sock = tls
    client.file = tls.makefile("rb")
    return tls


def b64(text):
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def cram_md5(challenge_b64, user, password):
    ticket = base64.b64decode(challenge_b64)
    digest = hmac.new(password.encode(), ticket, hashlib.md5).hexdigest()
    return b64(f"{user} {digest}")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TLSDaemon:
    """The real qpsmtpd-forkserver on a plain port and an SMTPS port."""

    def __init__(self, tmp_path, plugins, config=None):
        self.maildir = tmp_path / "maildir"
        self.port, self.smtps_port = free_port(), free_port()
        files = {"me": "mx.example.org", "rcpthosts": "example.test",
                 "spool_dir": str(tmp_path / "spool") + "/", "loglevel": "6",
                 "plugins": [line.format(smtps_port=self.smtps_port) for line in plugins]
                 + [f"queue/maildir {self.maildir}"]}
        files.update(config or {})
        self.config_dir = str(tmp_path / "config")
        write_config(self.config_dir, files)
        self.log_path = tmp_path / "daemon.log"
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "qpsmtpd_forkserver.py"),
             "--listen-address", "127.0.0.1", "--port", str(self.port),
             "--port", str(self.smtps_port), "--config-dir", self.config_dir],
            cwd=str(tmp_path), stderr=open(self.log_path, "wb"),
            env=dict(os.environ, PYTHONPATH=ROOT))
        # Both ports are bound before the first accept: a greeting on the
        # plain one means the SMTPS one listens too.
        deadline = time.time() + 15
        while True:
            assert self.proc.poll() is None, self.log()
            assert time.time() < deadline, self.log()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as probe:
                    if probe.recv(1024).startswith(b"220"):
                        break
            except OSError:
                pass
            time.sleep(0.05)

    def log(self):
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, fragment, timeout=5):
        deadline = time.time() + timeout
        while fragment not in self.log():
            if time.time() > deadline:
                raise AssertionError(f"{fragment!r} not in log:\n{self.log()}")
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
