"""content_log: the queued message appended to a dated file."""

import os
import re
import time

import pytest

from conftest import PLUGIN_DIR

TEST_PLUGINS = os.path.join(os.path.dirname(__file__), "plugins")

BODY = ("Subject: logged\r\n"
        "From: a@example.net\r\n"
        "\r\n"
        "line one\r\n"
        "..dotted\r\n"
        ".\r\n")


@pytest.fixture
def session(smtp_session, make_app, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def factory(config=None):
        app = make_app(["content_log", "returns rcpt OK", "returns queue OK"],
                       config, plugin_dirs=[TEST_PLUGINS, PLUGIN_DIR])
        return smtp_session(app=app)
    return factory


def expected_message(subject="logged"):
    return re.compile(
        rb"Authentication-Results: mx\.example\.org; auth=none\n"
        rb"Received: from client\.example\.net \(HELO client\.example\.net\) "
        rb"\(192\.0\.2\.10\)\n by mx\.example\.org \(qpsmtpd/[^)]+\) with ESMTP; [^\n]+\n"
        rb"Subject: " + subject.encode() + rb"\n"
        rb"From: a@example\.net\n"
        rb"\n"
        rb"line one\n"
        rb"\.dotted\n")


def test_default_file_is_mail_slash_date(session, tmp_path):
    (tmp_path / "mail").mkdir()
    client = session()
    assert client.send_message("a@example.net", ["b@example.org"], BODY).code == 250
    path = tmp_path / "mail" / time.strftime("%Y%m%d")
    assert expected_message().fullmatch(path.read_bytes())
    assert client.log_contains(f"(data_post) content_log: pass, saved message to "
                               f"{time.strftime('mail/%Y%m%d')}")


def test_messages_are_appended_without_separator(session, tmp_path):
    target = tmp_path / "archive-%Y"
    client = session({"content_log_file": str(target)})
    assert client.send_message("a@example.net", ["b@example.org"], BODY).code == 250
    assert client.cmd("MAIL FROM:<a@example.net>").code == 250
    assert client.cmd("RCPT TO:<b@example.org>").code == 250
    assert client.cmd("DATA").code == 354
    client.send(BODY.replace("logged", "second"))
    assert client.reply().code == 250
    content = (tmp_path / time.strftime("archive-%Y")).read_bytes()
    first, second = content.split(b"Authentication-Results: ")[1:]
    assert expected_message().fullmatch(b"Authentication-Results: " + first)
    assert expected_message("second").fullmatch(b"Authentication-Results: " + second)


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


def test_rejected_at_data_nothing_is_logged(smtp_session, make_app, tmp_path):
    target = tmp_path / "log"
    app = make_app(["content_log", "returns rcpt OK", "returns data DENY no thanks"],
                   {"content_log_file": str(target)}, plugin_dirs=[TEST_PLUGINS, PLUGIN_DIR])
    client = smtp_session(app=app)
    assert client.cmd("HELO client.example.net").code == 250
    assert client.cmd("MAIL FROM:<a@example.net>").code == 250
    assert client.cmd("RCPT TO:<b@example.org>").code == 250
    assert client.cmd("DATA") == (554, ["no thanks"])
    assert not target.exists()
