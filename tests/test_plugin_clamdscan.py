"""virus/clamdscan: INSTREAM scanning through a real clamd (Debian's
clamav-daemon) loaded with the EICAR test signature, over its unix socket
and TCP; a clamd that is down or hangs."""

import base64
import importlib.util
import os
import socket
import threading
import time

import pytest

from conftest import PLUGIN_DIR, captured_messages, strip_trace
from daemon_fixtures import EICAR, EICAR_NAME, clamd, free_port  # noqa: F401 (fixture)
from qpsmtpd.plugin import PluginError

SENDER = "alice@sender.example"
RECIPIENT = "bob@example.test"


def load_module():
    spec = importlib.util.spec_from_file_location(
        "clamdscan_under_test", os.path.join(PLUGIN_DIR, "virus", "clamdscan.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


clamdscan = load_module()

CLEAN = ("From: Alice <alice@sender.example>\r\nTo: bob@example.test\r\n"
         "Subject: the report\r\n\r\nPlease find the report below.\r\n.\r\n")
PLAIN_EICAR = ("From: a@sender.example\r\nSubject: test\r\n\r\nthe test string:\r\n"
               + EICAR.decode() + "\r\n.\r\n")
ATTACHED_EICAR = (
    "From: a@sender.example\r\nSubject: invoice\r\nMIME-Version: 1.0\r\n"
    'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
    "--b1\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n"
    "--b1\r\nContent-Type: application/octet-stream\r\n"
    "Content-Transfer-Encoding: base64\r\n"
    "Content-Disposition: attachment; filename=invoice.com\r\n\r\n"
    + base64.encodebytes(EICAR).decode().replace("\n", "\r\n")
    + "--b1--\r\n.\r\n")


def original(data):
    return data[:-3].replace("\r\n", "\n").encode()


@pytest.fixture
def session(plugin_session, queue_dir, clamd):  # noqa: F811
    def factory(args="", tcp=False, config=None, **connection):
        where = (f"clamd_port {clamd.port} clamd_host 127.0.0.1" if tcp
                 else f"clamd_socket {clamd.socket_path}")
        return plugin_session(["returns rcpt OK", f"virus/clamdscan {where} {args}".strip(),
                               f"capture {queue_dir}"], config, **connection)
    return factory


@pytest.fixture
def version(clamd):  # noqa: F811
    return clamdscan.ClamdClient(clamd.socket_path).version().split("/")[0]


def test_clean_message_lands_with_virus_headers_byte_exact(session, queue_dir, version):
    client = session()
    assert client.send_message(SENDER, [RECIPIENT], CLEAN) == (250, ["2.0.0 Queued! 0"])
    assert version.startswith("ClamAV ")
    expected = (f"X-Virus-Checked: by {version} on mx.example.org\n"
                "X-Virus-Found: No\n").encode()
    landed = captured_messages(queue_dir)[0]
    assert landed.startswith(expected)
    assert strip_trace(landed[len(expected):]) == original(CLEAN)
    assert client.log_contains("(data_post) virus::clamdscan: pass, clean")


def test_eicar_is_rejected_with_the_virus_name(session, queue_dir):
    client = session()
    reply = client.send_message(SENDER, [RECIPIENT], PLAIN_EICAR)
    assert reply == (552, [f"5.7.1 Virus found: {EICAR_NAME}"])
    assert captured_messages(queue_dir) == []
    assert client.log_contains(f"virus::clamdscan: fail, found virus {EICAR_NAME}")
    assert client.log_contains("virus::clamdscan: karma -1 (-1)")
    assert client.session.connection.notes["naughty"] == [
        f"(virus::clamdscan) Virus found: {EICAR_NAME}"]


def test_eicar_attachment_over_tcp(session, queue_dir):
    client = session(tcp=True)
    reply = client.send_message(SENDER, [RECIPIENT], ATTACHED_EICAR)
    assert reply == (552, [f"5.7.1 Virus found: {EICAR_NAME}"])
    assert client.send_message(SENDER, [RECIPIENT], CLEAN, helo=None).code == 250


def test_helo_session_gets_the_plain_reply(session):
    client = session()
    reply = client.send_message(SENDER, [RECIPIENT], PLAIN_EICAR, helo="HELO c.example")
    assert reply == (552, [f"Virus found: {EICAR_NAME}"])


def test_deny_viruses_no_tags_the_message(session, queue_dir):
    client = session("deny_viruses no")
    assert client.send_message(SENDER, [RECIPIENT], ATTACHED_EICAR).code == 250
    expected = f"X-Virus-Found: Yes\nX-Virus-Details: {EICAR_NAME}\n".encode()
    landed = captured_messages(queue_dir)[0]
    assert landed.startswith(expected)
    assert strip_trace(landed[len(expected):]) == original(ATTACHED_EICAR)


def test_after_a_virus_the_session_is_naughty_and_not_scanned_again(session, queue_dir):
    client = session("deny_viruses no")
    assert client.send_message(SENDER, [RECIPIENT], PLAIN_EICAR).code == 250
    assert client.send_message(SENDER, [RECIPIENT], PLAIN_EICAR, helo=None).code == 250
    assert client.log_contains("virus::clamdscan: skip, naughty")
    assert b"X-Virus" not in captured_messages(queue_dir)[1]


def test_forged_virus_headers_are_removed(session, queue_dir, version):
    client = session()
    forged = CLEAN.replace("Subject:", "X-Virus-Found: No\r\nX-Virus-Checked: by me\r\n"
                                       "Subject:")
    assert client.send_message(SENDER, [RECIPIENT], forged).code == 250
    landed = captured_messages(queue_dir)[0]
    assert landed.count(b"X-Virus-Found") == 1 and landed.count(b"X-Virus-Checked") == 1
    assert landed.startswith(f"X-Virus-Checked: by {version} on ".encode())


def test_message_over_max_size_is_not_scanned(session, queue_dir):
    client = session("max_size 1")
    data = PLAIN_EICAR.replace("the test string", "x" * 2000)
    assert client.send_message(SENDER, [RECIPIENT], data).code == 250
    assert client.log_contains("virus::clamdscan: skip, too big (")
    assert b"X-Virus" not in captured_messages(queue_dir)[0]


def test_scan_all_0_scans_only_multipart(session, queue_dir):
    client = session("scan_all 0")
    assert client.send_message(SENDER, [RECIPIENT], PLAIN_EICAR).code == 250
    assert client.log_contains("virus::clamdscan: skip, no content-type")
    text_plain = PLAIN_EICAR.replace("Subject:", "Content-Type: text/plain\r\nSubject:")
    assert client.send_message(SENDER, [RECIPIENT], text_plain, helo=None).code == 250
    assert client.log_contains("virus::clamdscan: skip, not multipart")
    assert client.send_message(SENDER, [RECIPIENT], ATTACHED_EICAR, helo=None).code == 552


# -- a clamd that is down, hangs, or refuses ------------------------------------------

def test_clamd_down_accepts_with_a_log_line(session, queue_dir, tmp_path):
    missing = tmp_path / "no-clamd.sock"
    client = session(f"clamd_socket {missing}")
    assert client.send_message(SENDER, [RECIPIENT], PLAIN_EICAR).code == 250
    assert client.log_contains(f"virus::clamdscan: error, cannot connect to clamd at "
                               f"{missing}: No such file or directory")


def test_clamd_down_defers_with_defer_on_error(plugin_session, queue_dir):
    port = free_port()
    client = plugin_session(["returns rcpt OK",
                             f"virus/clamdscan clamd_port {port} defer_on_error yes",
                             f"capture {queue_dir}"])
    assert client.send_message(SENDER, [RECIPIENT], CLEAN) == (
        452, ["4.7.1 Unable to scan for viruses"])
    assert client.log_contains(f"cannot connect to clamd at localhost:{port}")


class FakeClamd:
    """A unix-socket listener standing in for clamd where the real one cannot
    misbehave on demand: it never answers (hung), or answers ``answer``."""

    def __init__(self, path, answer=None):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        self.sock.listen(5)
        self.answer = answer
        self.conns = []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            if self.answer is not None:
                command = conn.recv(100)
                conn.sendall(b"ClamAV 0.0.0\0" if command.startswith(b"zVERSION")
                             else self.answer)
                conn.close()

    def close(self):
        for conn in self.conns:
            conn.close()
        self.sock.close()


@pytest.mark.parametrize("defer, code", [("no", 250), ("yes", 452)])
def test_hung_clamd_times_out(plugin_session, queue_dir, tmp_path, defer, code):
    fake = FakeClamd(tmp_path / "hung.sock")
    try:
        client = plugin_session(["returns rcpt OK",
                                 f"virus/clamdscan clamd_socket {tmp_path / 'hung.sock'} "
                                 f"timeout 1 defer_on_error {defer}",
                                 f"capture {queue_dir}"])
        started = time.monotonic()
        assert client.send_message(SENDER, [RECIPIENT], CLEAN).code == code
        assert time.monotonic() - started < 4
        assert client.log_contains("virus::clamdscan: error, timeout waiting for clamd")
    finally:
        fake.close()


def test_clamd_error_reply_is_not_a_clean_verdict(plugin_session, queue_dir, tmp_path):
    fake = FakeClamd(tmp_path / "full.sock", answer=b"INSTREAM size limit exceeded. ERROR\0")
    try:
        client = plugin_session(["returns rcpt OK",
                                 f"virus/clamdscan clamd_socket {tmp_path / 'full.sock'} "
                                 "defer_on_error yes", f"capture {queue_dir}"])
        assert client.send_message(SENDER, [RECIPIENT], CLEAN).code == 452
        assert client.log_contains("virus::clamdscan: error, clamd: INSTREAM size limit "
                                   "exceeded. ERROR")
    finally:
        fake.close()


# -- the clamd protocol, against the real daemon ------------------------------------------

def test_protocol_ping_and_version(clamd):  # noqa: F811
    for client in (clamdscan.ClamdClient(clamd.socket_path),
                   clamdscan.ClamdClient(host="127.0.0.1", port=clamd.port)):
        assert client.ping()
        assert client.version().startswith("ClamAV ")


def test_protocol_instream_in_small_chunks(clamd):  # noqa: F811
    client = clamdscan.ClamdClient(clamd.socket_path)
    data = b"From: a@b\n\n" + b"clean line\n" * 1000 + EICAR + b"\n"
    chunks = [data[i:i + 7] for i in range(0, len(data), 7)]
    assert client.instream(chunks) == EICAR_NAME
    assert client.instream([b"nothing to see\n"]) is None
    assert client.instream([]) is None


def test_protocol_unknown_command(clamd):  # noqa: F811
    assert "UNKNOWN COMMAND" in clamdscan.ClamdClient(clamd.socket_path).command(b"NOPE")


# -- bad configuration ------------------------------------------------------------------------

@pytest.mark.parametrize("args, error", [
    ("clamd_port three", "clamd_port must be a number"),
    ("max_size big", "max_size and timeout must be numbers"),
    ("deny_viruses", "Bad arguments"),
])
def test_bad_arguments_stop_the_start(make_app, args, error):
    with pytest.raises(PluginError, match=error):
        make_app([f"virus/clamdscan {args}"])
