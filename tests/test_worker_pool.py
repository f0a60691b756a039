"""Reused and spare workers of qpsmtpd-forkserver (--max-requests,
--idle-children): the real daemon, real clients, titles and pids read from
/proc and from the log."""

import os
import re
import signal
import time

import pytest

from forkserver_fixtures import children_of, title_of, wait_for

OUTSIDE = "someone@elsewhere.example"


def accepted_by(d):
    """(pid, client IP) of each ``Accepted connection`` line, in order."""
    return [(int(pid), ip) for pid, ip in
            re.findall(r"^(\d+) Accepted connection \d+/\d+ from (\S+)", d.log(), re.M)]


def spares(d):
    found = []
    for pid in children_of(d.pid):
        try:
            if title_of(pid) == "qpsmtpd: spare":
                found.append(pid)
        except OSError:         # it just ended
            pass
    return sorted(found)


def wait_spares(d, count, timeout=10):
    assert wait_for(lambda: len(spares(d)) == count, timeout), \
        f"{spares(d)} spares, expected {count}:\n{d.log()[-2000:]}"
    return spares(d)


def one_session(d, source="127.0.0.1", recipient="bob@example.test"):
    """A session that ends with QUIT; the RCPT reply code."""
    client = d.connect(source=source)
    assert client.greeting[0] == 220
    client.cmd("HELO c.example")
    client.cmd("MAIL FROM:<a@sender.example>")
    code = client.cmd(f"RCPT TO:<{recipient}>")[0]
    assert client.cmd("QUIT")[0] == 221
    client.close()
    return code


NOTES_PROBE = ('"""notes_probe - test plugin: what a new connection carries."""\n'
               "from qpsmtpd.plugin import Plugin\n"
               "class NotesProbe(Plugin):\n"
               "    def hook_connect(self, session):\n"
               "        notes = session.connection.notes\n"
               "        self.log_pass(f\"carried {'probe' in notes}\")\n"
               "        notes['probe'] = session.connection.remote_ip\n")


def test_a_reused_worker_starts_each_session_afresh(daemon, tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "notes_probe.py").write_text(NOTES_PROBE)
    d = daemon(plugins=("notes_probe", "relay", "rcpt_ok"), plugin_dirs=[plugins],
               config={"relayclients": ["127.0.0.2"]}, args=("--idle-children", "0"))
    assert one_session(d, source="127.0.0.2", recipient=OUTSIDE) == 250
    d.wait_log("cleaning up after")
    assert one_session(d, source="127.0.0.1", recipient=OUTSIDE) == 550
    d.wait_log("cleaning up after", count=2)
    (first, _), (second, _) = accepted_by(d)
    assert first == second                    # the same process served both
    assert d.log().count("notes_probe: pass, carried False") == 2
    assert "carried True" not in d.log()
    assert f"cleaning up after {first}" in d.log()
    assert children_of(d.pid) == [first]      # and waits for the next client
    assert title_of(first) == "qpsmtpd: spare"


def test_max_requests_ends_a_worker_after_that_many_sessions(daemon):
    d = daemon(args=("--idle-children", "0", "--max-requests", "2"))
    for n in range(3):
        assert one_session(d) == 250
        d.wait_log("cleaning up after", count=n + 1)
    pids = [pid for pid, _ in accepted_by(d)]
    assert pids[0] == pids[1] != pids[2]
    assert wait_for(lambda: pids[0] not in children_of(d.pid))
    assert d.log().count(f"cleaning up after {pids[0]}") == 2
    assert "exited with status" not in d.log()


def test_max_requests_1_is_a_fresh_process_per_connection(daemon):
    d = daemon(args=("--idle-children", "0", "--max-requests", "1"))
    for n in range(2):
        assert one_session(d) == 250
        d.wait_log("cleaning up after", count=n + 1)
        assert wait_for(lambda: children_of(d.pid) == [])
    first, second = [pid for pid, _ in accepted_by(d)]
    assert first != second


def test_spares_are_forked_ahead_and_replaced(daemon):
    d = daemon(args=("--idle-children", "3"))
    ready = wait_spares(d, 3)
    client = d.connect()
    assert client.greeting[0] == 220
    [(pid, _)] = accepted_by(d)
    assert pid in ready                       # a spare took the client
    assert d.children() == [pid]
    wait_spares(d, 3)                         # and a new spare took its place
    client.cmd("QUIT")
    client.close()
    d.wait_log("cleaning up after")
    assert wait_for(lambda: len(spares(d)) == 4)   # the worker is idle again


def test_a_spare_killed_while_idle_is_replaced(daemon):
    d = daemon(args=("--idle-children", "1"))
    [spare] = wait_spares(d, 1)
    os.kill(spare, signal.SIGKILL)
    d.wait_log(f"worker {spare} killed by signal 9")
    assert one_session(d) == 250
    [(pid, _)] = accepted_by(d)
    assert pid != spare


def test_sighup_replaces_the_idle_workers(daemon):
    d = daemon(args=("--idle-children", "2"))
    wait_spares(d, 2)
    busy = d.connect()
    (busy_pid, _), = accepted_by(d)
    wait_spares(d, 2)
    old = spares(d)
    with open(os.path.join(d.config_dir, "me"), "w") as handle:
        handle.write("reloaded.example.org\n")
    d.signal(signal.SIGHUP)
    d.wait_log("configuration and plugins reloaded")
    assert wait_for(lambda: not set(old) & set(children_of(d.pid)))
    new = wait_spares(d, 2)
    assert not set(new) & set(old)
    assert busy.cmd("QUIT")[0] == 221         # the old session ends normally
    busy.close()
    assert wait_for(lambda: busy_pid not in children_of(d.pid))  # not reused
    client = d.connect()
    assert client.greeting[1][0].startswith("reloaded.example.org ESMTP")
    client.close()


def test_sigterm_ends_idle_workers_at_once(daemon):
    d = daemon(args=("--idle-children", "3"))
    assert one_session(d) == 250
    wait_spares(d, 4)
    started = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.wait() == 0
    assert time.monotonic() - started < 3
    log = d.log().split("SIGTERM received")[1]
    assert "killed" not in log and "exited with status" not in log


def test_a_reused_worker_sees_an_edited_config_file_within_a_second(daemon):
    d = daemon(args=("--idle-children", "0"))
    assert one_session(d) == 250
    d.wait_log("cleaning up after")
    with open(os.path.join(d.config_dir, "me"), "w") as handle:
        handle.write("edited.example.org\n")
    time.sleep(1.2)
    client = d.connect()
    assert client.greeting[1][0].startswith("edited.example.org ESMTP")
    client.close()
    assert len({pid for pid, _ in accepted_by(d)}) == 1     # the same worker


def test_a_spare_is_ready_before_its_first_client(daemon):
    """The hook watchdog's thread is started by the spare itself, not on
    the path of its first client's greeting."""
    d = daemon(args=("--idle-children", "1"))
    [spare] = wait_spares(d, 1)
    assert wait_for(lambda: len(os.listdir(f"/proc/{spare}/task")) == 2)



@pytest.mark.parametrize("note, logged", [
    ("lambda: None", "cannot hand the connection over"),        # cannot be pickled
    ("'x' * 100000", "connection notes too big to hand over"),  # more than a packet
])
def test_connection_notes_that_cannot_travel_fall_back_to_a_fork(daemon, tmp_path,
                                                                 note, logged):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "odd_note.py").write_text(
        '"""odd_note - test plugin: a note no other process can take."""\n'
        "from qpsmtpd.plugin import Plugin\n"
        "class OddNote(Plugin):\n"
        "    def hook_pre_connection(self, session, info):\n"
        f"        session.connection.notes['odd'] = {note}\n")
    d = daemon(plugins=("odd_note", "relay", "rcpt_ok"), plugin_dirs=[plugins],
               args=("--idle-children", "1"))
    [spare] = wait_spares(d, 1)
    assert one_session(d) == 250
    [(pid, _)] = accepted_by(d)
    assert pid != spare
    assert logged in d.log()
