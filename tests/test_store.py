"""qpsmtpd/store.py: one suite, run against SQLite and against a real
redis-server; plus what only one backend has (URLs, WAL, errors)."""

import multiprocessing
import os
import socket
import sqlite3
import time

import pytest

from qpsmtpd import store as store_module
from qpsmtpd.store import (
    StoreError, ip_key, key_ip, normalise_url, open_store, resolve_url)
from store_fixtures import (  # noqa: F401
    fake_clock, free_port, redis_server, shift_clock_file, store_url)


# -- the shared contract ---------------------------------------------------------

def test_get_set_delete(store_url):
    store = open_store(store_url, "karma")
    assert store.get("3221225985") is None
    store.set("3221225985", "0:1:2:3")
    assert store.get("3221225985") == "0:1:2:3"
    store.set("3221225985", 17)
    assert store.get(3221225985) == "17"
    assert store.delete("3221225985") is True
    assert store.delete("3221225985") is False
    assert store.get("3221225985") is None


def test_names_do_not_share_entries(store_url):
    karma = open_store(store_url, "karma")
    grey = open_store(store_url, "greylisting")
    karma.set("1", "karma value")
    grey.set("1", "grey value")
    grey.set("1:a@example.org", "x")
    assert karma.get("1") == "karma value"
    assert grey.get("1") == "grey value"
    assert sorted(karma.items()) == [("1", "karma value")]
    assert sorted(grey.items()) == [("1", "grey value"), ("1:a@example.org", "x")]


def test_keys_with_glob_characters_are_literal(store_url):
    store = open_store(store_url, "greylisting")
    store.set("1:we*ird?[x]@example.org", "v")
    other = open_store(store_url, "greylisting*")
    other.set("2", "w")
    assert sorted(store.items()) == [("1:we*ird?[x]@example.org", "v")]


def test_incr(store_url):
    store = open_store(store_url, "rate")
    assert store.incr("192.0.2.1") == 1
    assert store.incr("192.0.2.1", 5) == 6
    assert store.incr("192.0.2.1", -2) == 4
    assert store.get("192.0.2.1") == "4"


def test_incr_of_text_is_an_error(store_url):
    store = open_store(store_url, "rate")
    store.set("k", "not a number")
    with pytest.raises(StoreError):
        store.incr("k")
    assert store.get("k") == "not a number"


def test_update_replaces_atomically_and_can_leave_alone(store_url):
    store = open_store(store_url, "karma")
    seen = []

    def bump(value):
        seen.append(value)
        return str(int(value or 0) + 1)
    assert store.update("k", bump) == "1"
    assert store.update("k", bump) == "2"
    assert seen == [None, "1"]
    assert store.update("k", lambda value: None) == "2"
    assert store.update("absent", lambda value: None) is None
    assert store.get("absent") is None


def test_expiry(store_url):
    store = open_store(store_url, "greylisting")
    store.set("short", "v", expire=0.3)
    store.set("long", "w", expire=60)
    store.set("forever", "x")
    assert store.incr("counter", expire=0.3) == 1
    assert store.get("short") == "v"
    time.sleep(0.45)
    assert store.get("short") is None
    assert store.get("counter") is None
    assert store.incr("counter") == 1          # starts again from nothing
    assert store.get("long") == "w"
    assert sorted(store.items()) == [("counter", "1"), ("forever", "x"), ("long", "w")]


def test_incr_without_expire_keeps_the_expiry(store_url):
    store = open_store(store_url, "rate")
    store.incr("k", expire=0.3)
    store.incr("k")
    time.sleep(0.45)
    assert store.get("k") is None


def _hammer(url, rounds, name):
    store = open_store(url, name)
    for _ in range(rounds):
        store.update("3221225985", lambda v: str(int(v or 0) + 1))
        store.incr("counter")
    os._exit(0)


def test_fifty_processes_lose_no_update(store_url):
    """50 forked writers, 20 read-modify-writes and 20 increments each."""
    store = open_store(store_url, "karma")
    store.set("warm", "connection made in the parent before forking")
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_hammer, args=(store_url, 20, "karma"))
               for _ in range(50)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    assert store.get("3221225985") == "1000"
    assert store.get("counter") == "1000"
    assert store.get("warm").startswith("connection made")


# -- time ----------------------------------------------------------------------------

def test_sqlite_expiry_follows_the_store_clock(tmp_path, fake_clock):
    store = open_store(f"sqlite:{tmp_path / 'q.sqlite'}", "greylisting")
    store.set("k", "v", expire=3000)
    fake_clock.advance(2999)
    assert store.get("k") == "v"
    fake_clock.advance(2)
    assert store.get("k") is None
    assert store.purge_expired() == 1


def test_fake_clock_file_shifts_time_only_when_asked(tmp_path, monkeypatch):
    offset = tmp_path / "offset"
    monkeypatch.delenv(store_module.FAKE_CLOCK_ENV, raising=False)
    shift_clock_file(offset, 3600)
    assert abs(store_module.now() - time.time()) < 5
    monkeypatch.setenv(store_module.FAKE_CLOCK_ENV, str(offset))
    assert abs(store_module.now() - time.time() - 3600) < 5
    offset.write_text("not a number\n")
    assert abs(store_module.now() - time.time()) < 5
    offset.unlink()
    assert abs(store_module.now() - time.time()) < 5


def test_open_store_warns_about_the_test_clock(tmp_path, monkeypatch):
    warnings = []
    monkeypatch.delenv(store_module.FAKE_CLOCK_ENV, raising=False)
    open_store(f"sqlite:{tmp_path / 'q.sqlite'}", "karma", log=warnings.append)
    assert warnings == []
    monkeypatch.setenv(store_module.FAKE_CLOCK_ENV, str(tmp_path / "offset"))
    open_store(f"sqlite:{tmp_path / 'q.sqlite'}", "karma", log=warnings.append)
    assert len(warnings) == 1 and "test clock active" in warnings[0]


# -- URLs, keys ---------------------------------------------------------------------

def test_resolve_url_precedence(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_url("redis://mx:6379/2", "/srv/db", "r:1", "sqlite:x") == "redis://mx:6379/2"
    assert resolve_url(None, "/srv/db", "r:1", "sqlite:x") == "sqlite:/srv/db/qpsmtpd.sqlite"
    assert resolve_url(None, None, "r:1", "sqlite:x") == "redis://r:1/0"
    assert resolve_url(None, None, None, "sqlite:x.db") == f"sqlite:{tmp_path}/x.db"
    assert resolve_url() == f"sqlite:{tmp_path}/var/db/qpsmtpd.sqlite"
    assert normalise_url("sqlite:///abs/file.db") == "sqlite:/abs/file.db"


@pytest.mark.parametrize("url", ["mysql://db/x", "sqlite:", "", "/var/db/file"])
def test_unknown_urls_are_refused(url):
    with pytest.raises(StoreError):
        open_store(url, "karma")


def test_ip_keys_are_qpsmtpds_integers():
    assert ip_key("192.0.2.1") == "3221225985"
    assert ip_key("::ffff:192.0.2.1") == "3221225985"
    assert ip_key("[192.0.2.1]") == "3221225985"
    assert ip_key("2001:db8::1") == str(0x20010DB8000000000000000000000001)
    assert ip_key("not-an-ip") is None
    assert ip_key("") is None
    assert key_ip("3221225985") == "192.0.2.1"
    assert key_ip(ip_key("2001:db8::1")) == "2001:db8::1"


# -- SQLite specifics ------------------------------------------------------------------

def test_sqlite_file_is_created_in_wal_mode(tmp_path):
    path = tmp_path / "var" / "db" / "qpsmtpd.sqlite"
    store = open_store(f"sqlite:{path}", "karma")
    store.set("1", "0:0:1:1")
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT store, key, value FROM entries").fetchall() == \
            [("karma", "1", "0:0:1:1")]


def test_sqlite_unwritable_place_is_a_store_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory should be")
    store = open_store(f"sqlite:{blocker / 'db' / 'q.sqlite'}", "karma")
    with pytest.raises(StoreError) as caught:
        store.get("1")
    assert "cannot open" in str(caught.value)


def test_sqlite_garbage_file_is_a_store_error(tmp_path):
    path = tmp_path / "garbage.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    store = open_store(f"sqlite:{path}", "karma")
    with pytest.raises(StoreError):
        store.set("1", "x")


# -- one connection per process, for every session it serves ---------------------------

class FlakyConnection:
    """A sqlite3 connection whose next COMMIT (or ROLLBACK) fails once."""

    def __init__(self, real, fail_on, error):
        self.real, self.fail_on, self.error = real, fail_on, error
        self.closed = False

    def execute(self, sql, *args):
        if self.fail_on and sql.startswith(self.fail_on):
            self.fail_on = None
            raise self.error
        return self.real.execute(sql, *args)

    @property
    def in_transaction(self):
        return self.real.in_transaction

    def close(self):
        self.closed = True
        self.real.close()


def _backend(store):
    return store_module._backends[store.url]


def test_sqlite_connection_is_kept_for_the_next_session(tmp_path):
    store = open_store(f"sqlite:{tmp_path / 'q.sqlite'}", "karma")
    store.set("1", "a")
    first = _backend(store)._connection
    again = open_store(f"sqlite:{tmp_path / 'q.sqlite'}", "greylisting")
    again.set("2", "b")
    assert store.get("1") == "a"
    assert _backend(store)._connection is first


@pytest.mark.parametrize("fail_on", ["COMMIT", "ROLLBACK"])
def test_sqlite_failure_leaves_no_transaction_for_the_next_session(tmp_path, fail_on):
    path = tmp_path / "q.sqlite"
    store = open_store(f"sqlite:{path}", "karma")
    store.set("1", "before")
    backend = _backend(store)
    flaky = FlakyConnection(backend._connection, fail_on,
                            sqlite3.OperationalError("disk I/O error"))
    backend._connection = flaky

    def change(old):
        if fail_on == "ROLLBACK":
            raise ValueError("a plugin's bug")
        return "during"

    with pytest.raises(StoreError if fail_on == "COMMIT" else ValueError):
        store.update("1", change)
    # The next session: the connection was closed, a new one works.
    assert flaky.closed and backend._connection is None
    assert store.get("1") == "before"
    store.set("1", "after")
    assert store.get("1") == "after"
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM entries").fetchall() == [("after",)]


def test_sqlite_busy_timeout_keeps_the_connection(tmp_path):
    store = open_store(f"sqlite:{tmp_path / 'q.sqlite'}", "karma")
    store.set("1", "a")
    backend = _backend(store)
    busy = sqlite3.OperationalError("database is locked")
    flaky = FlakyConnection(backend._connection, "COMMIT", busy)
    backend._connection = flaky
    with pytest.raises(StoreError, match="locked"):
        store.set("1", "b")
    assert backend._connection is flaky and not flaky.in_transaction
    store.set("1", "c")
    assert store.get("1") == "c"


def test_sqlite_file_removed_between_sessions(tmp_path):
    path = tmp_path / "q.sqlite"
    store = open_store(f"sqlite:{path}", "karma")
    store.set("1", "old")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(f"{path}{suffix}"):
            os.remove(f"{path}{suffix}")
    store.set("2", "new")      # not into the deleted file
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT key, value FROM entries").fetchall() == [("2", "new")]
    assert store.get("1") is None


def test_sqlite_connection_does_not_cross_fork(tmp_path):
    store = open_store(f"sqlite:{tmp_path / 'q.sqlite'}", "karma")
    store.set("1", "parent")
    backend = _backend(store)
    assert backend._connection is not None
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:    # the child: nothing inherited, its own connection
        try:
            os.close(reader)
            ok = backend._connection is None and store.get("1") == "parent"
            store.set("2", "child")
            ok = ok and backend._connection is not None
            os.write(writer, b"ok" if ok else b"bad")
        finally:
            os._exit(0)
    os.close(writer)
    answer = os.read(reader, 16)
    os.close(reader)
    os.waitpid(pid, 0)
    assert answer == b"ok"
    assert backend._connection is None      # closed before the fork
    assert store.get("2") == "child"
    assert backend._connection is not None


# -- Redis specifics --------------------------------------------------------------------

def test_redis_keys_carry_the_store_name(redis_server):
    import redis
    redis_server.flush()
    open_store(redis_server.url + "/3", "karma").set("3221225985", "0:0:1:1")
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, db=3)
    assert client.get("karma:3221225985") == b"0:0:1:1"


def test_redis_down_fails_fast(monkeypatch):
    with socket.socket() as sock:   # a port with nobody listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = open_store(f"redis://127.0.0.1:{port}/0", "greylisting")
    with pytest.raises(StoreError):
        store.get("1")
    started = time.monotonic()
    with pytest.raises(StoreError) as caught:
        store.set("1", "x")
    assert "not retried yet" in str(caught.value)
    assert time.monotonic() - started < 0.1


def test_redis_password_is_not_shown():
    assert store_module.describe("redis://:s3cret@mx:6379/0") == "redis://:***@mx:6379/0"
    assert "s3cret" not in repr(open_store("redis://:s3cret@127.0.0.1:1/0", "karma"))


def test_free_port_helper_gives_a_port():
    assert 0 < free_port() < 65536
