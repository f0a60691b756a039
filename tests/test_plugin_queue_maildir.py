"""queue/maildir: what lands on disk, the replies, and every failure path.

Each test runs a real session over a socketpair (``smtp_session``) with the
test plugin ``returns rcpt OK`` accepting recipients and ``queue/maildir``
queueing, then reads the Maildir back byte for byte.
"""

import os
import re
import resource
import shutil
import signal
import stat
import tempfile
import tracemalloc

import pytest

from conftest import maildir_messages, strip_trace
from qpsmtpd.plugin import PluginError

MESSAGE = (
    "Subject: hello\r\n"
    "From: Alice <alice@example.net>\r\n"
    "Message-Id: <123@example.net>\r\n"
    "\r\n"
    "first line\r\n"
    "..leading dot\r\n"
    "\r\n"
    "last line\r\n"
    ".\r\n"
)

ORIGINAL = (
    b"Subject: hello\n"
    b"From: Alice <alice@example.net>\n"
    b"Message-Id: <123@example.net>\n"
    b"\n"
    b"first line\n"
    b".leading dot\n"
    b"\n"
    b"last line\n"
)


@pytest.fixture
def session(plugin_session):
    """A session whose queue is ``queue/maildir <args>``."""

    def factory(*args, config=None):
        return plugin_session(["returns rcpt OK", "queue/maildir " + " ".join(map(str, args))],
                              config)

    return factory


def tree(path):
    """Every file under ``path`` (relative names), for "nothing left" checks."""
    found = []
    for root, _, files in os.walk(path):
        found.extend(os.path.relpath(os.path.join(root, f), path) for f in files)
    return sorted(found)


def expect_file(content, delivered_to, sender=b"<alice@example.net>", original=ORIGINAL):
    envelope = (b"Return-Path: " + sender + b"\n"
                + b"".join(b"Delivered-To: " + d + b"\n" for d in delivered_to))
    assert content.startswith(envelope), content
    assert strip_trace(content[len(envelope):]) == original


def test_message_lands_byte_exact(session, tmp_path):
    maildir = tmp_path / "Maildir"
    client = session(maildir)
    reply = client.send_message("alice@example.net", ["bob@example.org"], MESSAGE)
    assert reply.code == 250
    assert reply.lines == ["2.0.0 Queued! <123@example.net>"]
    messages = maildir_messages(maildir)
    assert len(messages) == 1
    expect_file(messages[0], [b"bob@example.org"])
    assert sorted(os.listdir(maildir)) == ["cur", "new", "tmp"]
    assert os.listdir(maildir / "tmp") == []
    name = os.listdir(maildir / "new")[0]
    assert re.fullmatch(r"\d+\.P%dM\d+Q\d+\.[^/:]+" % os.getpid(), name), name
    assert stat.S_IMODE(os.stat(maildir / "new" / name).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(maildir / "new").st_mode) == 0o700
    assert client.log_contains("queue::maildir: pass, delivered to " + str(maildir / "new"))
    # the session goes on: a second message gets its own file
    reply = client.send_message("", ["carol@example.org"],
                                "Subject: bounce\r\n\r\nbody\r\n.\r\n", helo=None)
    assert reply == (250, ["2.0.0 Queued!"])
    messages = maildir_messages(maildir)
    assert len(messages) == 2
    assert any(m.startswith(b"Return-Path: <>\nDelivered-To: carol@example.org\n")
               for m in messages)


def test_several_recipients_one_file(session, tmp_path):
    maildir = tmp_path / "Maildir"
    client = session(maildir)
    reply = client.send_message("alice@example.net",
                                ["bob@example.org", "carol@example.org"], MESSAGE)
    assert reply.code == 250
    messages = maildir_messages(maildir)
    assert len(messages) == 1
    # qpsmtpd's order: the last recipient on top
    expect_file(messages[0], [b"carol@example.org", b"bob@example.org"])


def test_pattern_one_copy_per_recipient(session, tmp_path):
    base = tmp_path / "spool"
    client = session(base, "%d/%l", "770")
    reply = client.send_message(
        "alice@example.net",
        ["Bob@Example.ORG", "carol@example.org", "bob@example.org", "dave+x@other.example"],
        MESSAGE)
    assert reply.code == 250
    assert reply.lines == ["2.0.0 Queued! <123@example.net>"]
    bob = maildir_messages(base / "example.org" / "bob")
    carol = maildir_messages(base / "example.org" / "carol")
    dave = maildir_messages(base / "other.example" / "dave+x")
    assert len(bob) == len(carol) == len(dave) == 1  # Bob@ and bob@ once
    expect_file(bob[0], [b"Bob@Example.ORG"])
    expect_file(carol[0], [b"carol@example.org"])
    expect_file(dave[0], [b"dave+x@other.example"])
    assert stat.S_IMODE(os.stat(base / "example.org").st_mode) == 0o770
    assert stat.S_IMODE(os.stat(base / "example.org" / "bob" / "new").st_mode) == 0o770
    name = os.listdir(base / "example.org" / "bob" / "new")[0]
    assert stat.S_IMODE(os.stat(base / "example.org" / "bob" / "new" / name).st_mode) == 0o660
    assert tree(base / "example.org" / "bob" / "tmp") == []


def test_pattern_full_address_and_unsafe_characters(session, tmp_path):
    base = tmp_path / "spool"
    client = session(base, "%u")
    reply = client.send_message("alice@example.net", ["a/b!c@example.org", "postmaster"],
                                MESSAGE)
    assert reply.code == 250
    assert len(maildir_messages(base / "a_b_c@example.org")) == 1
    # a bare postmaster gets config/me's domain
    assert len(maildir_messages(base / "postmaster@mx.example.org")) == 1


def test_pattern_refuses_dot_dot(session, tmp_path):
    base = tmp_path / "deep" / "spool"
    client = session(base, "%l")
    reply = client.send_message("alice@example.net", ["ok@example.org", '".."@example.org'],
                                MESSAGE)
    assert reply == (451, ["4.3.0 queue error (recipient)"])
    assert client.log_contains("error, recipient <..@example.org> gives the unsafe "
                               "maildir path '..'")
    # the copy already made for ok@ was taken back, nothing escaped upwards
    assert maildir_messages(base / "ok") == []
    assert tree(tmp_path / "deep") == []


def test_relative_path_is_relative_to_working_directory(session, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    client = session("relative/Maildir")
    reply = client.send_message("alice@example.net", ["bob@example.org"], MESSAGE)
    assert reply.code == 250
    assert len(maildir_messages(tmp_path / "relative" / "Maildir")) == 1


def test_maildir_is_a_regular_file(session, tmp_path):
    target = tmp_path / "not-a-dir"
    target.write_bytes(b"x")
    client = session(target)
    assert client.log_contains("error, cannot create maildir")  # at start-up
    reply = client.send_message("alice@example.net", ["bob@example.org"], MESSAGE)
    assert reply == (451, ["4.3.0 queue error (mkdir)"])
    assert client.log_contains("error, cannot create maildir " + str(target))
    assert target.read_bytes() == b"x"


def test_new_is_a_file(session, tmp_path):
    maildir = tmp_path / "Maildir"
    for sub in ("tmp", "cur"):
        os.makedirs(maildir / sub)
    (maildir / "new").write_bytes(b"")  # a file where new/ should be
    client = session(maildir)
    reply = client.send_message("alice@example.net", ["bob@example.org"], MESSAGE)
    assert reply == (451, ["4.3.0 queue error (mkdir)"])
    assert client.log_contains("cannot create maildir")
    assert tree(maildir / "tmp") == []


def test_link_failure_leaves_nothing(session, tmp_path):
    """new/ on another file system: link() fails with EXDEV."""
    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another file system than the test's tmp dir")
    other = tempfile.mkdtemp(dir="/dev/shm")
    try:
        maildir = tmp_path / "Maildir"
        for sub in ("tmp", "cur"):
            os.makedirs(maildir / sub)
        os.symlink(other, maildir / "new")
        client = session(maildir)
        reply = client.send_message("alice@example.net", ["bob@example.org"], MESSAGE)
        assert reply == (451, ["4.3.0 queue error (link)"])
        assert client.log_contains("error, could not link " + str(maildir / "tmp"))
        assert client.log_contains("Invalid cross-device link")
        assert tree(maildir / "tmp") == []
        assert os.listdir(other) == []
    finally:
        shutil.rmtree(other)


def test_write_failure_removes_tmp_file(session, tmp_path):
    """A write that fails half way (EFBIG from RLIMIT_FSIZE standing in for
    ENOSPC): 451, and the partial file is gone from tmp/."""
    maildir = tmp_path / "Maildir"
    # keep the spool in memory so only the maildir write hits the limit
    client = session(maildir, config={"size_threshold": "10000000"})
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    body = "Subject: big\r\n\r\n" + ("x" * 998 + "\r\n") * 200 + ".\r\n"
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, old_limit[1]))
        reply = client.send_message("alice@example.net", ["bob@example.org"], body)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert reply == (451, ["4.3.0 queue error (write)"])
    assert client.log_contains("error, could not write ")
    assert tree(maildir) == []
    # the next message goes through
    assert client.send_message("alice@example.net", ["bob@example.org"], MESSAGE,
                               helo=None).code == 250


@pytest.mark.parametrize("args, error", [
    ("", "maildir directory not specified"),
    ("/tmp/x nopattern", "does not contain a substitution parameter"),
    ("/tmp/x ../%d", "must be a relative path"),
    ("/tmp/x /%d", "must be a relative path"),
    ("/tmp/x %d 9x9", "mode is not an octal number"),
    ("/tmp/x %d 000", "mode is not an octal number"),
])
def test_bad_arguments_stop_start_up(make_app, args, error):
    with pytest.raises(PluginError, match=error):
        make_app(["queue/maildir " + args])


def test_large_message_is_streamed(session, tmp_path):
    """20 MB through DATA and into the Maildir; Python allocations stay a
    small fraction of the message size (the spool is on disk)."""
    maildir = tmp_path / "Maildir"
    client = session(maildir)
    line = ("y" * 998 + "\r\n").encode()
    count = 20 * 1024 * 1024 // len(line)
    client.start_data("alice@example.net", ["bob@example.org"])
    tracemalloc.start()
    try:
        client.send(b"Subject: big\r\n\r\n")
        block = line * 64
        for _ in range(count // 64):
            client.send(block)
        client.send(b".\r\n")
        reply = client.reply()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reply.code == 250
    size = os.path.getsize(maildir / "new" / os.listdir(maildir / "new")[0])
    assert size > count // 64 * 64 * 999
    print(f"maildir: {size} byte message, Python peak allocation {peak} bytes")
    assert peak < 4 * 1024 * 1024
