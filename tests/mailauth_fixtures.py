"""Keys, messages and outside verifiers for the SPF, DKIM and DMARC tests.

A test module loads these with ``pytest_plugins = ["dns_fixtures",
"mailauth_fixtures"]``.

* ``dkim_keys`` (session): ``DKIMKeys`` made once by ``plugins/dkim_key_gen``
  (so the script is exercised too): ``.dir`` is a key tree with
  ``example.com/`` (selector ``sel2026``); ``.private`` is the PEM key,
  ``.record`` the TXT text to publish, ``.publish(dns, domain, selector)``
  puts it into the test DNS server.
* ``sign(message, keys, domain, selector, ...)``: ``message`` (bytes, LF
  or CR LF) with a DKIM-Signature from dkimpy prepended - incoming signed
  mail, as another MTA would send it.
* ``smtp_data(message)``: the DATA text a client sends for ``message``
  (CR LF, dot-stuffed, the final dot).
* ``auth_results(message)`` / ``header_field(message, name)``: one
  header field of a landed message, unfolded, as text.
* Outside verifiers, each asking a DNS server the test controls:
  ``mail_dkim_verify(message, dns)`` runs Perl's Mail::DKIM (what
  qpsmtpd itself used) with Net::DNS pointed at the test server and
  returns ``(result, detail)``; ``opendkim_server`` (module) is a test
  DNS server on 127.0.0.153 port 53, and ``opendkim_verify(message,
  server)`` runs ``opendkim-testmsg`` in a private mount namespace whose
  /etc/resolv.conf names that server (libopendkim asks the system resolver,
  which only knows port 53), returning ``(exit status, stderr)``.
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from typing import NamedTuple

import dkim
import pytest

from dns_fixtures import DNSTestServer

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
KEY_GEN = os.path.join(ROOT, "plugins", "dkim_key_gen")
SELECTOR = "sel2026"
OPENDKIM_TESTMSG = "/usr/sbin/opendkim-testmsg"
OPENDKIM_DNS_HOST = "127.0.0.153"


class DKIMKeys(NamedTuple):
    dir: str
    private: bytes
    record: str

    def publish(self, dns, domain, selector=SELECTOR):
        dns.add(f"{selector}._domainkey.{domain}", "TXT", self.record)


@pytest.fixture(scope="session")
def dkim_keys(tmp_path_factory):
    base = tmp_path_factory.mktemp("dkim")
    keys = base / "keys"
    result = subprocess.run([sys.executable, KEY_GEN, "--dir", str(keys), "--selector",
                             SELECTOR, "--bits", "2048", "example.com"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    folder = keys / "example.com"
    public = (folder / "public").read_text()
    key = "".join(line for line in public.splitlines() if "-----" not in line)
    record = f"v=DKIM1; k=rsa; p={key}"
    # the printed DNS record carries the same key, in strings DNS can hold
    printed = "".join(re.findall(r'"([^"]*)"', result.stdout.split("\n\n")[0]))
    assert printed == record
    return DKIMKeys(str(keys), (folder / "private").read_bytes(), record)


def sign(message, keys, domain="example.com", selector=SELECTOR,
         canonicalize=(b"relaxed", b"relaxed"), include_headers=None):
    """``message`` with a DKIM-Signature prepended (dkimpy, as another MTA)."""
    message = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    signature = dkim.sign(message, selector.encode(), domain.encode(), keys.private,
                          canonicalize=canonicalize, include_headers=include_headers)
    return signature + message


def smtp_data(message):
    """What a client sends after 354 for ``message`` (bytes or text)."""
    if isinstance(message, str):
        message = message.encode()
    lines = message.replace(b"\r\n", b"\n").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    stuffed = [b"." + line if line.startswith(b".") else line for line in lines]
    return b"".join(line + b"\r\n" for line in stuffed) + b".\r\n"


def header_field(message, name):
    """The first ``name:`` field of ``message`` (bytes), unfolded, as text."""
    head = message.split(b"\n\n", 1)[0].decode("utf-8", "replace")
    match = re.search(rf"^{re.escape(name)}:(.*(?:\n[ \t].*)*)", head, re.M | re.I)
    if match is None:
        return None
    return re.sub(r"\n[ \t]", " ", match.group(1)).strip()


def auth_results(message):
    return header_field(message, "Authentication-Results")


# -- Mail::DKIM (Perl) ------------------------------------------------------------------

_PERL_VERIFY = r"""
use strict;
use Mail::DKIM::Verifier;
use Net::DNS::Resolver;
my ($server, $port) = @ARGV;
Mail::DKIM::DNS::resolver(Net::DNS::Resolver->new(
    nameservers => [$server], port => $port, recurse => 1,
    udp_timeout => 5, tcp_timeout => 5, retry => 1));
my $verifier = Mail::DKIM::Verifier->new;
binmode STDIN;
while (my $line = <STDIN>) { $line =~ s/\r?\n\z/\r\n/; $verifier->PRINT($line); }
$verifier->CLOSE;
print $verifier->result, "|", $verifier->result_detail, "\n";
"""


def mail_dkim_available():
    if shutil.which("perl") is None:
        return False
    check = subprocess.run(["perl", "-MMail::DKIM::Verifier", "-MNet::DNS", "-e", "1"],
                           capture_output=True)
    return check.returncode == 0


def mail_dkim_verify(message, dns):
    """``(result, detail)`` from Perl's Mail::DKIM, keys from ``dns``."""
    run = subprocess.run(["perl", "-e", _PERL_VERIFY, dns.host, str(dns.port)],
                         input=message, capture_output=True, timeout=30)
    assert run.returncode == 0, run.stderr
    result, _, detail = run.stdout.decode().strip().partition("|")
    return result, detail


# -- opendkim-testmsg ----------------------------------------------------------------------

class Port53DNSServer(DNSTestServer):
    """The test DNS server on port 53 of one loopback address."""

    def start(self):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            udp.bind((self.host, 53))
            tcp.bind((self.host, 53))
        except OSError:
            udp.close()
            tcp.close()
            raise
        tcp.listen(16)
        udp.settimeout(0.2)
        tcp.settimeout(0.2)
        self.port, self._udp, self._tcp = 53, udp, tcp
        for target in (self._serve_udp, self._serve_tcp):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self


def opendkim_unavailable():
    """Why opendkim-testmsg cannot run here, or None."""
    if not os.access(OPENDKIM_TESTMSG, os.X_OK):
        return f"{OPENDKIM_TESTMSG} is not installed (Debian package opendkim-tools)"
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return "opendkim-testmsg needs root and unshare(1) to be pointed at the test DNS server"
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        return f"unshare -m is not permitted here: {probe.stderr.decode().strip()}"
    return None


@pytest.fixture(scope="module")
def opendkim_server(tmp_path_factory):
    reason = opendkim_unavailable()
    if reason:
        pytest.skip(reason)
    try:
        server = Port53DNSServer(OPENDKIM_DNS_HOST).start()
    except OSError as exc:
        pytest.skip(f"cannot listen on {OPENDKIM_DNS_HOST}:53: {exc}")
    resolv = tmp_path_factory.mktemp("opendkim") / "resolv.conf"
    resolv.write_text(f"nameserver {OPENDKIM_DNS_HOST}\noptions timeout:2 attempts:1\n")
    server.resolv_conf = str(resolv)
    yield server
    server.stop()


def opendkim_verify(message, server):
    """``(exit status, stderr text)`` of ``opendkim-testmsg`` verifying
    ``message``; 0 and no output means the signature verified."""
    script = f"mount --bind {server.resolv_conf} /etc/resolv.conf && exec {OPENDKIM_TESTMSG}"
    run = subprocess.run(["unshare", "-m", "sh", "-c", script],
                         input=message.replace(b"\r\n", b"\n"), capture_output=True,
                         timeout=30)
    return run.returncode, run.stderr.decode().strip()
