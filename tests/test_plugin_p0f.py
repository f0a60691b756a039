"""ident/p0f: against the real p0f 3 daemon sniffing loopback (root and
/usr/sbin/p0f needed), and against a small socket server that plays back a
reply recorded from p0f 3.09b, for what the real daemon cannot be made to
say here (Windows, DSL links, refusals, broken replies)."""

import os
import shutil
import socket
import struct
import subprocess
import threading
import time

import pytest

from conftest import PLUGIN_DIR, TEST_PLUGINS, maildir_messages
from qpsmtpd.plugin import PluginError
from forkserver_fixtures import Daemon

P0F = shutil.which("p0f") or ("/usr/sbin/p0f" if os.path.exists("/usr/sbin/p0f") else None)
ident_p0f = None  # the plugin module, loaded below


def plugin_module():
    global ident_p0f
    if ident_p0f is None:
        import importlib.util
        spec = importlib.util.spec_from_file_location(
            "p0f_under_test", os.path.join(PLUGIN_DIR, "ident", "p0f.py"))
        ident_p0f = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(ident_p0f)
    return ident_p0f


def v3_reply(status=0x10, os_name=b"Linux", flavor=b"2.2.x-3.x", link=b"",
             distance=0, uptime_min=0, magic=0x50304602):
    """A p0f 3 API reply laid out as p0f 3.09b sends it (this one was
    recorded from p0f watching a loopback connection on this machine)."""
    return struct.pack("=IIIIIIIIIhBB32s32s32s32s32s32s", magic, status, 1795227646,
                       1795227646, 2, uptime_min, 0, 0, 0, distance, 0, 2, os_name,
                       flavor, b"", b"", link, b"")


class RecordedP0f:
    """A unix socket that answers every query with one fixed reply and
    keeps the queries it got."""

    def __init__(self, path, reply):
        self.path = str(path)
        self.reply = reply
        self.queries = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self.queries.append(conn.recv(64))
                conn.sendall(self.reply)

    def close(self):
        self.sock.close()


@pytest.fixture
def recorded(tmp_path):
    servers = []

    def factory(reply):
        server = RecordedP0f(tmp_path / f"p0f{len(servers)}.sock", reply)
        servers.append(server)
        return server
    yield factory
    for server in servers:
        server.close()


@pytest.fixture
def connect(make_app, smtp_session, tmp_path):
    def factory(*plugins, files=None, **connection):
        config = {"rcpthosts": ["example.org"]}
        config.update(files or {})
        app = make_app(list(plugins) + ["rcpt_ok", f"capture {tmp_path / 'queue'}"], config,
                       plugin_dirs=[TEST_PLUGINS, PLUGIN_DIR])
        return smtp_session(app=app, **connection)
    return factory


def notes(client):
    return client.session.connection.notes


# -- the query and the reply, byte by byte ------------------------------------------------

def test_v3_query_layout():
    module = plugin_module()
    assert module.v3_query("192.0.2.1") == struct.pack("=IB", 0x50304601, 4) + \
        bytes([192, 0, 2, 1]) + bytes(12)
    assert module.v3_query("2001:db8::1") == struct.pack("=IB", 0x50304601, 6) + \
        socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    assert module.v3_query("::ffff:192.0.2.1")[4] == 4
    with pytest.raises(module.P0fError):
        module.v3_query("not-an-ip")


def test_v3_reply_parsing():
    module = plugin_module()
    result = module.parse_v3(v3_reply(os_name=b"Windows", flavor=b"7 or 8", link=b"DSL",
                                      distance=12, uptime_min=185))
    assert (result["genre"], result["detail"], result["link"], result["distance"],
            result["uptime"], result["uptime_min"]) == ("Windows", "7 or 8", "DSL", 12, 3, 185)
    assert module.parse_v3(v3_reply(status=0x20)) is None
    for broken in (v3_reply(status=0x00), v3_reply(magic=1), v3_reply()[:100],
                   v3_reply(status=0x99)):
        with pytest.raises(module.P0fError):
            module.parse_v3(broken)


def test_v2_query_and_reply():
    module = plugin_module()
    query = module.v2_query("192.0.2.1", "192.0.2.25", 40000, 25, ident=7)
    assert query == struct.pack("=III", 0x0DEFACED, 1, 7) + bytes([192, 0, 2, 1, 192, 0, 2, 25]) \
        + struct.pack("=HH", 40000, 25)
    reply = struct.pack("=IIB20s40sb30s30sBBBhH", 0x0DEFACED, 7, 0, b"FreeBSD", b"6.x (1)", 17,
                        b"ethernet/modem", b"", 0, 0, 0, 0, 0) + (1390).to_bytes(4, "big")
    assert module.parse_v2(reply) == {"genre": "FreeBSD", "detail": "6.x (1)", "distance": 17,
                                      "link": "ethernet/modem", "uptime": 1390}
    assert module.parse_v2(reply[:8] + b"\x02" + reply[9:]) is None
    with pytest.raises(module.P0fError):
        module.v2_query("2001:db8::1", "192.0.2.25", 1, 25)


# -- sessions against the recorded reply ------------------------------------------------------

def test_note_and_log_line(connect, recorded):
    server = recorded(v3_reply(os_name=b"Windows", flavor=b"7 or 8", link=b"DSL", distance=9))
    client = connect(f"ident/p0f {server.path}")
    p0f = notes(client)["p0f"]
    assert p0f["genre"] == "Windows" and p0f["link"] == "DSL" and p0f["distance"] == 9
    assert client.log_contains("(connect) ident::p0f: Windows 7 or 8")
    assert server.queries == [struct.pack("=IB", 0x50304601, 4) + bytes([192, 0, 2, 10])
                              + bytes(12)]
    assert "karma" not in notes(client)


def test_smite_os_costs_karma(connect, recorded):
    server = recorded(v3_reply(os_name=b"Windows", flavor=b"XP"))
    client = connect(f"ident/p0f {server.path} smite_os windows|solaris")
    assert notes(client)["karma"] == -1
    assert client.log_contains("ident::p0f: fail, smite_os matched Windows")


def test_blocked_operating_systems(connect, recorded):
    server = recorded(v3_reply(os_name=b"Windows", flavor=b"XP"))
    client = connect(f"ident/p0f {server.path}",
                     files={"p0f_blocked_operating_systems": ["# blocked", "/^windows xp/"]})
    client.cmd("EHLO x")
    client.cmd("MAIL FROM:<a@example.net>")
    assert client.cmd("RCPT TO:<b@example.org>") == (550, ["5.7.1 OS Blocked"])
    other = connect(f"ident/p0f {server.path}",
                    files={"p0f_blocked_operating_systems": ["Linux", "windows 7"]})
    other.cmd("EHLO x")
    other.cmd("MAIL FROM:<a@example.net>")
    assert other.cmd("RCPT TO:<b@example.org>").code == 250


def test_headers(connect, recorded, tmp_path):
    server = recorded(v3_reply(link=b"Ethernet or modem"))
    client = connect(f"ident/p0f {server.path}")
    assert client.send_message("a@example.net", ["b@example.org"],
                               "X-P0F-Genre: forged\r\nSubject: x\r\n\r\nb\r\n.\r\n").code == 250
    head = (tmp_path / "queue" / "0.eml").read_bytes().split(b"\n\n")[0]
    assert b"X-P0F-Genre: Linux\n" in head
    assert b"X-P0F-Link-Type: Ethernet or modem\n" in head
    assert b"forged" not in head


def test_no_match_and_refusals(connect, recorded):
    server = recorded(v3_reply(status=0x20))
    client = connect(f"ident/p0f {server.path}")
    assert "p0f" not in notes(client)
    assert client.log_contains("ident::p0f: skip, no match")
    server = recorded(v3_reply(magic=0xDEAD))
    client = connect(f"ident/p0f {server.path}")
    assert client.greeting.code == 220
    assert client.log_contains("ident::p0f: error, p0f: bad response magic")


def test_p0f_not_running(connect, tmp_path):
    client = connect(f"ident/p0f {tmp_path / 'no-such.sock'}")
    assert client.greeting.code == 220
    assert client.log_contains("ident::p0f: error, p0f: cannot query")
    assert client.send_message("a@example.net", ["b@example.org"],
                               "Subject: x\r\n\r\nb\r\n.\r\n").code == 250


@pytest.mark.parametrize("line", ["ident/p0f", "ident/p0f /run/p0f.sock version 4",
                                  "ident/p0f /run/p0f.sock smite_os (unclosed",
                                  "ident/p0f /run/p0f.sock version"])
def test_bad_arguments_stop_the_start(make_app, line):
    with pytest.raises(PluginError):
        make_app([line])


# -- the real p0f daemon -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def p0f_daemon(tmp_path_factory):
    if not P0F:
        pytest.skip("p0f is not installed (Debian package p0f)")
    if os.geteuid() != 0:
        pytest.skip("p0f must run as root to sniff the loopback interface")
    directory = tmp_path_factory.mktemp("p0f")
    path = str(directory / "p0f.sock")
    proc = subprocess.Popen([P0F, "-i", "lo", "-s", path, "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 10
    while not os.path.exists(path) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    if not os.path.exists(path):
        proc.kill()
        pytest.skip(f"p0f could not start here: {proc.stderr.read().decode()[-300:]}")
    # Show p0f one loopback connection and wait until it knows 127.0.0.1, so
    # the daemon's query cannot race p0f's packet capture.
    module = plugin_module()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        deadline = time.time() + 10
        result = None
        while result is None and time.time() < deadline:
            with socket.create_connection(listener.getsockname()):
                listener.accept()[0].close()
            time.sleep(0.1)
            result = module.query_v3(path, "127.0.0.1")
    if result is None:
        proc.kill()
        pytest.skip("p0f runs but sees no loopback traffic here")
    yield path
    proc.terminate()
    proc.wait(10)


def test_real_p0f_identifies_the_loopback_client(tmp_path, p0f_daemon):
    import smtplib
    daemon = Daemon(tmp_path / "mx", plugins=(f"ident/p0f {p0f_daemon}", "rcpt_ok"),
                    args=("--no-rdns",))
    try:
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=10) as client:
            client.sendmail("a@example.net", ["b@example.test"],
                            b"Subject: fingerprint\r\n\r\nbody\r\n")
        daemon.wait_log("ident::p0f:")
        log = daemon.log()
        assert "(connect) ident::p0f: Linux" in log, log[-2000:]
        message = maildir_messages(daemon.maildir)[0]
        assert b"X-P0F-Genre: Linux\n" in message
    finally:
        daemon.stop()
