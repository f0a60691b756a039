"""content_log: the queued message appended to a dated file."""

import time

import pytest

from conftest import strip_trace

BODY = ("Subject: logged\r\n"
        "From: a@example.net\r\n"
        "\r\n"
        "line one\r\n"
        "..dotted\r\n"
        ".\r\n")


@pytest.fixture
def session(plugin_session, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def factory(config=None):
        return plugin_session(["content_log", "returns rcpt OK", "returns queue OK"], config)
    return factory


def as_logged(subject=b"logged"):
    """BODY as logged, after the two header fields the server prepends."""
    return b"Subject: " + subject + b"\nFrom: a@example.net\n\nline one\n.dotted\n"


def test_default_file_is_mail_slash_date(session, tmp_path):
    (tmp_path / "mail").mkdir()
    client = session()
    assert client.send_message("a@example.net", ["b@example.org"], BODY).code == 250
    path = tmp_path / "mail" / time.strftime("%Y%m%d")
    assert strip_trace(path.read_bytes()) == as_logged()
    assert client.log_contains(f"(data_post) content_log: pass, saved message to "
                               f"{time.strftime('mail/%Y%m%d')}")


def test_messages_are_appended_without_separator(session, tmp_path):
    target = tmp_path / "archive-%Y"
    client = session({"content_log_file": str(target)})
    assert client.send_message("a@example.net", ["b@example.org"], BODY).code == 250
    assert client.send_message("a@example.net", ["b@example.org"],
                               BODY.replace("logged", "second"), helo=None).code == 250
    content = strip_trace((tmp_path / time.strftime("archive-%Y")).read_bytes())
    assert content.startswith(as_logged())
    assert strip_trace(content[len(as_logged()):]) == as_logged(b"second")


@pytest.mark.parametrize("value, logged", [
    ("true", True), ("1", True), ("yes    ", True), ("YES", True),
    ("0", False), ("false", False), ("no", False), ("asdf", False), ("on", False),
])
def test_content_log_enabled(session, tmp_path, value, logged):
    target = tmp_path / "log"
    client = session({"content_log_enabled": value, "content_log_file": str(target)})
    assert client.send_message("a@example.net", ["b@example.org"], BODY).code == 250
    assert target.exists() is logged


def test_unwritable_file_is_logged_and_the_mail_still_queued(session, tmp_path):
    # no mail/ directory: the default file cannot be opened
    client = session()
    assert client.send_message("a@example.net", ["b@example.org"], BODY) == (250, ["2.0.0 Queued"])
    assert client.log_contains("(data_post) content_log: error, could not write "
                               f"{time.strftime('mail/%Y%m%d')}: No such file or directory")


def test_rejected_at_data_nothing_is_logged(plugin_session, tmp_path):
    target = tmp_path / "log"
    client = plugin_session(["content_log", "returns rcpt OK", "returns data DENY no thanks"],
                            {"content_log_file": str(target)})
    assert client.cmd("HELO client.example.net").code == 250
    assert client.cmd("MAIL FROM:<a@example.net>").code == 250
    assert client.cmd("RCPT TO:<b@example.org>").code == 250
    assert client.cmd("DATA") == (554, ["no thanks"])
    assert not target.exists()
