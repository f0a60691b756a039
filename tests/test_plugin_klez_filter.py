"""virus/klez_filter: the Klez signature in the first body lines of big
messages."""

import pytest

from conftest import captured_messages

PE = "TVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
PADDING = ("QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB\r\n"
           * 1000)


def klez(content_type="audio/x-wav", pe_line=PE, lines_before=0):
    return ("From: a@x.example\r\nSubject: hello\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/alternative; boundary="k"\r\n\r\n'
            "--k\r\nContent-Type: text/html\r\n\r\n<html></html>\r\n"
            + "filler\r\n" * lines_before
            + f"--k\r\nContent-type: {content_type};\r\n name=a.exe\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n"
            f"{pe_line}\r\n{PADDING}--k--\r\n.\r\n")


@pytest.fixture
def client(plugin_session, queue_dir):
    return plugin_session(["returns rcpt OK", "virus/klez_filter", f"capture {queue_dir}"])


def send(client, text):
    return client.send_message("a@x.example", ["b@example.test"], text)


def test_klez_is_refused(client, queue_dir):
    assert send(client, klez()) == (552, ["5.7.1 Klez Virus Detected"])
    assert captured_messages(queue_dir) == []
    assert client.log_contains("virus::klez_filter: fail, Klez signature")


def test_application_type_counts_too(client):
    assert send(client, klez("application/octet-stream")).code == 552


@pytest.mark.parametrize("text", [
    klez("image/png"),                       # not audio/application
    klez(pe_line="QUJD" + PE),               # no PE header at the line start
    klez(lines_before=40),                   # beyond the first 41 body lines
    klez().replace(PADDING, ""),             # under 60000 bytes
], ids=["other-type", "no-signature", "too-deep", "too-small"])
def test_look_alikes_pass(client, text):
    assert send(client, text).code == 250


def test_huge_single_line_is_read_in_pieces(client):
    text = "From: a@x.example\r\n\r\n" + "x" * 3_000_000 + "\r\n.\r\n"
    assert send(client, text).code == 250
    assert client.log_contains("virus::klez_filter: pass")
