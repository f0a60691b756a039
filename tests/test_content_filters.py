"""spamassassin and virus/clamdscan together, against the real spamd and
clamd: the three verdicts an admin checks first (GTUBE, EICAR, clean mail
byte-exact), and a 30 MB message through the real forkserver without the
worker's memory growing."""

import email.utils
import re
import socket

import pytest

from conftest import captured_messages, maildir_messages, strip_trace
from daemon_fixtures import EICAR, EICAR_NAME, GTUBE, clamd, spamd  # noqa: F401 (fixtures)
from forkserver_fixtures import Daemon, children_of, proc_status

SENDER = "alice@sender.example"
RECIPIENT = "bob@example.test"


def message(body):
    date = email.utils.formatdate(localtime=True)
    return (f"From: Alice <{SENDER}>\r\nTo: Bob <{RECIPIENT}>\r\nSubject: hello\r\n"
            f"Date: {date}\r\nMessage-Id: <20251121.1@sender.example>\r\n\r\n"
            f"{body}\r\n.\r\n")


@pytest.fixture
def client(plugin_session, queue_dir, spamd, clamd):  # noqa: F811
    return plugin_session([
        "returns rcpt OK",
        f"spamassassin spamd_socket {spamd.socket_path} reject 12",
        f"virus/clamdscan clamd_socket {clamd.socket_path}",
        f"capture {queue_dir}"])


def send(client, text):
    return client.send_message(SENDER, [RECIPIENT], text)


def test_gtube_is_rejected(client, queue_dir):
    assert send(client, message(GTUBE.decode())) == (
        552, ["5.7.1 spam score exceeded threshold"])
    assert captured_messages(queue_dir) == []


def test_eicar_is_rejected(client, queue_dir):
    assert send(client, message(EICAR.decode())) == (
        552, [f"5.7.1 Virus found: {EICAR_NAME}"])
    assert captured_messages(queue_dir) == []


def test_clean_message_lands_byte_exact(client, queue_dir):
    data = message("Hello Bob,\r\n\r\nsee you at lunch.")
    assert send(client, data) == (250, ["2.0.0 Queued! 0"])
    landed = captured_messages(queue_dir)[0]
    top = re.match(
        rb"X-Virus-Checked: by ClamAV \d+\.\d+\.\d+ on mx\.example\.org\n"
        rb"X-Virus-Found: No\n"
        rb"X-Spam-Checker-Version: SpamAssassin \d+\.\d+\.\d+ \(\d{4}-\d\d-\d\d\) on \S+\n"
        rb"X-Spam-Level: \*\n"
        rb"X-Spam-Status: No, score=1\.3 required=5\.0 tests=RCVD_ILLEGAL_IP\n"
        rb"\tautolearn=disabled version=4\.0\.1\n", landed)
    assert top, landed[:500]
    assert strip_trace(landed[top.end():]) == data[:-3].replace("\r\n", "\n").encode()


def memory_kb(pid, field):
    return int(proc_status(pid)[field].split()[0])


def test_30mb_message_streams_through_both_without_memory_growth(
        tmp_path, spamd, clamd):  # noqa: F811
    """spamd is skipped above its size limit (500 kB by default), clamd scans
    all 30 MB through INSTREAM; the worker's peak resident memory grows by a
    few MB at most."""
    d = Daemon(tmp_path, plugins=(
        "rcpt_ok",
        f"spamassassin spamd_socket {spamd.address} reject 12",
        f"virus/clamdscan clamd_socket {clamd.socket_path} max_size 40960"),
        config={"databytes": str(100 * 1024 * 1024)})
    try:
        sock = socket.create_connection(("127.0.0.1", d.port), timeout=120)
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220")
        sock.sendall(b"EHLO c.example\r\n")
        while not reader.readline().startswith(b"250 "):
            pass
        sock.sendall(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        for _ in range(3):
            reader.readline()
        worker = children_of(d.proc.pid)[0]
        before = memory_kb(worker, "VmRSS")
        line = b"y" * 998 + b"\r\n"
        sock.sendall(b"Subject: big\r\n\r\n")
        block = line * 1024
        for _ in range(30):
            sock.sendall(block)  # 30 MiB of 1000-byte lines
        sock.sendall(b".\r\n")
        reply = reader.readline()
        assert reply.startswith(b"250 "), reply
        peak = memory_kb(worker, "VmHWM")
        growth_mb = (peak - before) / 1024
        print(f"worker VmRSS at DATA {before} kB, peak {peak} kB, growth {growth_mb:.2f} MB")
        assert growth_mb < 8, f"worker grew by {growth_mb:.1f} MB"
        sock.sendall(b"QUIT\r\n")
        reader.readline()
        sock.close()
        log = d.log()
        size = len(b"Subject: big\n\n") + 999 * 1024 * 30  # LF endings as spooled
        assert f"spamassassin: skip, too large ({size})" in log
        assert "virus::clamdscan: pass, clean" in log
        landed = maildir_messages(d.maildir)[0]
        assert len(landed) > size
        assert b"\nX-Virus-Found: No\n" in landed[:2000]
    finally:
        d.stop()
