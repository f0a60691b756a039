"""Faults injected for real: a full disk (a 1 MB tmpfs as the spool or
the maildir), a queue target that is down (a closed port), plugins written
to misbehave (tests/plugins/misbehave.py: raise, return garbage, hang), a
client that vanishes mid-DATA, and kill -9 of a forkserver worker mid-DATA.
Each must cost the client a 4xx at most, never a lost or half-delivered
message, and leave nothing in the spool."""

import os
import signal
import subprocess
import time

import pytest

from conftest import TEST_PLUGINS, captured_messages, maildir_messages
from forkserver_fixtures import Daemon, free_port, wait_for

MESSAGE = "Subject: fault\r\n\r\nbody\r\n.\r\n"


@pytest.fixture
def tmpfs(tmp_path):
    """Factory: a fresh tmpfs of ``size`` mounted at tmp_path/<name>."""
    mounted = []

    def mount(name, size="1m"):
        path = tmp_path / name
        path.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700",
                                 "tmpfs", str(path)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs ({result.stderr.strip()}); "
                        "these tests need root")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def files_in(directory):
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def start_data(client):
    assert client.cmd("EHLO client.example.net").code == 250
    assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
    assert client.cmd("RCPT TO:<b@rcpt.example>").code == 250
    assert client.cmd("DATA").code == 354


def big_message(size):
    line = "x" * 998 + "\r\n"
    return "Subject: big\r\n\r\n" + line * (size // len(line)) + ".\r\n"


# -- a full disk --------------------------------------------------------------------------

def test_spool_disk_full_is_452_and_the_partial_file_goes(mta, tmpfs, queue_dir):
    spool = tmpfs("spool")
    client = mta(spool_dir=f"{spool}/")
    start_data(client)
    client.send(big_message(2_000_000))
    assert client.reply() == (452, ["4.3.1 Insufficient system storage, try again later"])
    assert files_in(spool) == []
    assert client.log_contains("cannot write the message to the spool: [Errno 28]")
    # the session goes on, and the space is there again for a small message
    assert client.cmd("NOOP") == (250, ["2.0.0 OK"])
    assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
    assert client.cmd("RCPT TO:<b@rcpt.example>").code == 250
    assert client.cmd("DATA").code == 354
    client.send(MESSAGE)
    assert client.reply().code == 250
    assert len(captured_messages(queue_dir)) == 1


def test_spool_disk_full_at_the_last_write(mta, tmpfs, queue_dir):
    """A message smaller than the spool's write buffer fails only when the
    buffer is written out after the final dot: the same 452."""
    spool = tmpfs("spool")
    filler = spool / "filler"
    with open(filler, "wb") as handle:
        try:
            handle.write(b"f" * (1024 * 1024))
        except OSError:
            pass
    client = mta(spool_dir=f"{spool}/")
    start_data(client)
    client.send(big_message(150_000))
    assert client.reply() == (452, ["4.3.1 Insufficient system storage, try again later"])
    assert files_in(spool) == ["filler"]
    assert captured_messages(queue_dir) == []


def test_maildir_disk_full_is_451_and_leaves_nothing(mta, tmpfs):
    maildir = tmpfs("maildir")
    client = mta(queue=f"queue/maildir {maildir}")
    start_data(client)
    client.send(big_message(1_500_000))
    reply = client.reply()
    assert reply.code == 451 and "queue error" in reply.text, reply
    assert maildir_messages(maildir) == []
    assert files_in(maildir / "tmp") == []
    assert files_in(client.spool) == []


# -- the queue target is down ------------------------------------------------------------------

def test_queue_target_down_is_451(mta, queue_dir):
    port = free_port()     # bound once, closed again: nothing listens
    client = mta(queue=f"queue/smtp-forward 127.0.0.1 {port} timeout 5")
    start_data(client)
    client.send(MESSAGE)
    reply = client.reply()
    assert reply.code == 451 and reply.text.startswith("4.3.0 Unable to queue message ("), reply
    assert "127.0.0.1" not in reply.text
    assert client.log_contains("error")
    assert files_in(client.spool) == []


# -- plugins that raise or return garbage ------------------------------------------------------

@pytest.mark.parametrize("hook, code", [
    ("mail", 450), ("rcpt", 450), ("data", 451), ("data_post", 452), ("queue", 452)])
def test_a_plugin_that_raises_costs_a_4xx_and_a_log_line(mta, queue_dir, hook, code):
    client = mta(f"misbehave {hook} raise")
    assert client.cmd("EHLO client.example.net").code == 250
    replies = [client.cmd("MAIL FROM:<a@sender.example>")]
    if replies[-1].code == 250:
        replies.append(client.cmd("RCPT TO:<b@rcpt.example>"))
    if replies[-1].code == 250:
        replies.append(client.cmd("DATA"))
    if replies[-1].code == 354:
        client.send(MESSAGE)
        replies.append(client.reply())
    assert replies[-1].code == code
    assert "Internal error - try again later" in replies[-1].text
    assert client.log_contains("FATAL PLUGIN ERROR [misbehave]: RuntimeError('broken on purpose')")
    assert captured_messages(queue_dir) == []
    assert client.cmd("NOOP").code == 250


@pytest.mark.parametrize("mode, shown", [
    ("garbage", "'OK please'"), ("true", "True"), ("unhashable", "[1]")])
def test_a_plugin_that_returns_garbage_costs_a_4xx(mta, queue_dir, mode, shown):
    client = mta(f"misbehave data_post {mode}")
    start_data(client)
    client.send(MESSAGE)
    assert client.reply() == (452, ["4.7.1 Internal error - try again later"])
    assert client.log_contains(f"Plugin misbehave, hook data_post returned {shown}")
    assert captured_messages(queue_dir) == []
    assert client.cmd("NOOP").code == 250


# -- plugins that hang ---------------------------------------------------------------------------

def test_a_hanging_plugin_in_a_thread_gets_451_and_the_session_ends(mta, queue_dir):
    """Sessions in threads (this test, a program embedding the engine): the
    watchdog answers 451, drops the spooled message and closes; the stuck
    thread ends when the plugin returns, without another byte."""
    client = mta("misbehave data_post hang:30", hook_timeout=1)
    start_data(client)
    client.send(MESSAGE)
    started = time.monotonic()
    assert client.reply() == (451, ["4.3.0 Internal error - try again later"])
    assert 0.9 < time.monotonic() - started < 3.5
    assert client.closed()
    assert client.log_contains("hook_timeout: plugin misbehave did not return from hook "
                               "data_post within 1 s; ending the session")
    assert files_in(client.spool) == []
    plugin = client.app.dispatcher.plugins[0]
    plugin.release.set()
    client.thread.join(5)
    assert not client.thread.is_alive()
    assert captured_messages(queue_dir) == []


def test_a_hanging_connect_hook_gets_451(mta):
    client = mta("misbehave connect hang:30", hook_timeout=1, read_greeting=False)
    assert client.reply() == (451, ["Internal error - try again later"])
    assert client.closed()
    client.app.dispatcher.plugins[0].release.set()


def test_a_slow_plugin_within_hook_timeout_is_fine(mta, queue_dir):
    client = mta("misbehave rcpt hang:0.5", hook_timeout=2)
    assert client.cmd("EHLO client.example.net").code == 250
    assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
    assert client.cmd("RCPT TO:<b@rcpt.example>").code == 250


def test_hook_timeout_zero_waits_for_ever(mta, queue_dir):
    client = mta("misbehave data_post hang:2", hook_timeout=0)
    start_data(client)
    client.send(MESSAGE)
    assert client.reply().code == 250
    assert len(captured_messages(queue_dir)) == 1


# -- the client vanishes ----------------------------------------------------------------------------

def test_client_vanishing_mid_data_queues_nothing(mta, queue_dir):
    client = mta()
    start_data(client)
    client.send("Subject: gone\r\n\r\n" + "v" * 998 + "\r\n")
    client.send(("w" * 998 + "\r\n") * 400)
    assert wait_for(lambda: files_in(client.spool), timeout=5)
    client.file.close()
    client.sock.close()
    client.thread.join(5)
    assert not client.thread.is_alive()
    assert files_in(client.spool) == []
    assert captured_messages(queue_dir) == []
    assert client.log_contains("client closed the connection during DATA") or \
        client.log_contains("client connection lost")


# -- the forkserver: a stuck worker, a killed worker ------------------------------------------------

@pytest.fixture
def daemon(tmp_path):
    started = []

    def factory(**kwargs):
        instance = Daemon(tmp_path / f"d{len(started)}", args=["-H"], **kwargs)
        started.append(instance)
        return instance

    yield factory
    for instance in started:
        instance.stop()


def deliver(server, text="Subject: after\r\n\r\nstill serving\r\n.\r\n"):
    client = server.connect()
    try:
        assert client.greeting[0] == 220
        client.start_data()
        client.send(text)
        return client.reply()
    finally:
        client.close()


def test_a_stuck_worker_answers_451_and_exits(daemon):
    server = daemon(plugins=("relay", "rcpt_ok", "misbehave data_post hang:forever helo stuck"),
                    config={"hook_timeout": "1"}, plugin_dirs=[TEST_PLUGINS])
    client = server.connect()
    assert client.cmd("EHLO stuck")[0] == 250
    assert client.cmd("MAIL FROM:<a@sender.example>")[0] == 250
    assert client.cmd("RCPT TO:<bob@example.test>")[0] == 250
    assert client.cmd("DATA")[0] == 354
    client.send(MESSAGE)
    assert client.reply() == (451, ["4.3.0 Internal error - try again later"])
    assert client.closed()
    client.close()
    server.wait_children(0)
    server.wait_log("exited with status 1")
    assert "hook_timeout: plugin misbehave did not return from hook data_post" in server.log()
    assert maildir_messages(server.maildir) == []
    assert files_in(os.path.join(server.directory, "spool")) == []
    assert deliver(server)[0] == 250
    assert len(maildir_messages(server.maildir)) == 1


def test_kill_9_of_a_worker_mid_data_delivers_nothing(daemon):
    server = daemon()
    client = server.connect()
    client.start_data()
    client.send("Subject: killed\r\n\r\n" + ("k" * 998 + "\r\n") * 300)
    spool = os.path.join(server.directory, "spool")
    assert wait_for(lambda: files_in(spool), timeout=5)
    (worker,) = server.wait_children(1)
    os.kill(worker, signal.SIGKILL)
    assert client.closed()
    client.close()
    server.wait_children(0)
    server.wait_log(f"worker {worker} killed by signal 9")
    assert maildir_messages(server.maildir) == []
    assert files_in(os.path.join(server.maildir, "new")) == []
    # the parent goes on serving
    assert deliver(server)[0] == 250
    assert len(maildir_messages(server.maildir)) == 1
