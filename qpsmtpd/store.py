"""State that outlives a connection: karma history, greylist triplets, counters.

One small interface, two backends, chosen by a URL:

* ``sqlite:<path>`` (``sqlite:///var/lib/qpsmtpd/qpsmtpd.sqlite``,
  ``sqlite:var/db/qpsmtpd.sqlite``) — the embedded default: one file, WAL
  journal, every write in an ``IMMEDIATE`` transaction, so any number of
  forked workers may write at once and none loses an update. A relative path
  is taken from the working directory when the URL is resolved.
* ``redis://[:password@]host[:port][/db]`` — for several MX hosts that must
  share one view (redis-py; connect timeout 1 s, command timeout 2 s).

``open_store(url, name)`` returns a ``Store``: a view of the backend holding
the entries of one store name (``karma``, ``greylisting``). Several names
share one SQLite file or one Redis database; in SQLite the name is a column,
in Redis a key prefix (``karma:3221226219``). Keys and values are text and
keep qpsmtpd's formats (§9.7 of the reference), so data from qpsmtpd's DBM
files can be imported as it is (``python3 -m qpsmtpd.karma_tool import``).

The operations:

* ``get(key)`` — the value, or None when absent or expired;
* ``set(key, value, expire=None)`` — replace; ``expire`` in seconds from
  now, None for no expiry;
* ``incr(key, amount=1, expire=None)`` — add to an integer value (absent
  counts as 0), return the new value; ``expire`` renews the expiry, None
  keeps it;
* ``update(key, change, expire=None)`` — atomic read-modify-write:
  ``change(old_value_or_None)`` returns the new value, or None to leave the
  entry as it is; returns what was stored (or the old value). ``change`` may
  be called more than once (Redis retries when another writer got there
  first), so it must not have side effects;
* ``delete(key)`` — True when something was removed;
* ``items()`` — ``(key, value)`` of every live entry, in no order.

Every backend failure (Redis down, SQLite locked past the busy timeout, an
unwritable directory) raises ``StoreError``; callers log it and let the
mail through rather than fail the session. After a Redis connection failure
the backend answers ``StoreError`` at once for ``REDIS_RETRY_AFTER``
seconds, so a dead Redis costs one connect timeout, not one per command.

Time. The store's users (expiry here, the karma penalty box, greylisting's
timeouts) take the time from ``now()``, which calls the module attribute
``clock``. Tests replace ``qpsmtpd.store.clock`` in-process; for real
processes, when the environment variable ``QPSMTPD_FAKE_CLOCK_FILE`` names
a file, the clock adds the number of seconds written in it (missing or
unreadable file: 0). That variable is meant for tests only: a store opened
while it is set logs a warning. Redis expires entries by its own clock; an
expiry is only ever housekeeping, never a decision, so the two may differ.

Connections are made lazily and per process, and kept for every session the
process serves (a forkserver worker serves many): one SQLite connection or
one Redis client per backend and process. SQLite connections never cross a
``fork()``: the forking process closes its own first (``os.register_at_fork``),
and a connection that was inherited anyway (the pid changed) is never used
— it is set aside unclosed, since closing it could checkpoint the WAL under
the parent's feet. A SQLite connection that failed (anything but the busy
timeout), or whose transaction could not be rolled back, is closed and the
next operation opens a new one, so one bad moment does not break the
sessions after it. One whose file was removed or replaced (one ``stat()``
per operation) is set aside and a new one opened, so that writes never go
to a deleted file. Redis clients reconnect by themselves (redis-py drops a
connection that failed, and a client made before a fork is replaced).
"""

import ipaddress
import os
import random
import sqlite3
import threading
import time
from urllib.parse import urlsplit

from .log import current_pid

FAKE_CLOCK_ENV = "QPSMTPD_FAKE_CLOCK_FILE"
DEFAULT_DIR = os.path.join("var", "db")
DEFAULT_FILE = "qpsmtpd.sqlite"
SQLITE_BUSY_TIMEOUT = 10        # seconds a writer waits for the lock
REDIS_CONNECT_TIMEOUT = 1
REDIS_COMMAND_TIMEOUT = 2
REDIS_RETRY_AFTER = 5           # seconds a failed Redis is not asked again
REDIS_UPDATE_DEADLINE = 10      # seconds an update keeps retrying


class StoreError(Exception):
    """The backend cannot answer; the message says why."""


class SystemClock:
    """``time.time()``, shifted by the seconds in ``$QPSMTPD_FAKE_CLOCK_FILE``
    when that variable is set (tests only)."""

    def __call__(self):
        now = time.time()
        path = os.environ.get(FAKE_CLOCK_ENV)
        if path:
            now += fake_clock_offset(path)
        return now


def fake_clock_offset(path):
    try:
        with open(path) as handle:
            return float(handle.read().strip() or 0)
    except (OSError, ValueError):
        return 0.0


clock = SystemClock()


def now():
    """The current time in seconds since the epoch, from ``clock``."""
    return clock()


# -- URLs ---------------------------------------------------------------------

def resolve_url(store=None, db_dir=None, redis=None, site_url=None):
    """The store URL a plugin uses, first match wins:

    ``store`` (a URL argument), ``db_dir`` (qpsmtpd's argument: the SQLite
    file ``<db_dir>/qpsmtpd.sqlite``), ``redis`` (greylisting's legacy
    ``host[:port]`` argument: database 0), ``site_url`` (``config/store``),
    else ``var/db/qpsmtpd.sqlite`` under the working directory. Relative
    SQLite paths become absolute here, so a later ``chdir`` (``--detach``)
    does not move the data. Raises ``StoreError`` for an unknown scheme.
    """
    if store:
        return normalise_url(store)
    if db_dir:
        return "sqlite:" + os.path.abspath(os.path.join(db_dir, DEFAULT_FILE))
    if redis:
        return "redis://" + redis + "/0"
    if site_url:
        return normalise_url(site_url)
    return "sqlite:" + os.path.abspath(os.path.join(DEFAULT_DIR, DEFAULT_FILE))


def normalise_url(url):
    url = url.strip()
    if url.startswith("sqlite:"):
        path = url[len("sqlite:"):]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise StoreError(f"no file in store URL {url!r}")
        return "sqlite:" + os.path.abspath(path)
    if url.startswith(("redis://", "rediss://", "unix://")):
        return url
    raise StoreError(f"unknown store URL {url!r}: use sqlite:<path> or "
                     f"redis://host:port/db")


def describe(url):
    """The URL without a password, for log lines."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(":" + parts.password + "@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url


# -- the view plugins use --------------------------------------------------------

_backends = {}   # url -> backend, per process (backends track their own pid)


def open_store(url, name, log=None):
    """The ``Store`` called ``name`` in the backend at ``url``.

    Nothing is connected yet; the first operation connects. ``log``, when
    given, is called as ``log(message)`` once for warnings about the store
    (the test clock being active).
    """
    url = normalise_url(url)
    backend = _backends.get(url)
    if backend is None:
        backend = SQLiteBackend(url) if url.startswith("sqlite:") else RedisBackend(url)
        _backends[url] = backend
    if log is not None and os.environ.get(FAKE_CLOCK_ENV):
        log(f"store {name}: test clock active ({FAKE_CLOCK_ENV}), "
            f"offset {fake_clock_offset(os.environ[FAKE_CLOCK_ENV]):.0f} s")
    return Store(backend, name)


class Store:
    """The entries of one store name; see the module docstring."""

    def __init__(self, backend, name):
        self.backend = backend
        self.name = name
        self.url = backend.url

    def get(self, key):
        return self.backend.get(self.name, str(key))

    def set(self, key, value, expire=None):
        self.backend.set(self.name, str(key), str(value), expire)

    def incr(self, key, amount=1, expire=None):
        return self.backend.incr(self.name, str(key), int(amount), expire)

    def update(self, key, change, expire=None):
        return self.backend.update(self.name, str(key), change, expire)

    def delete(self, key):
        return self.backend.delete(self.name, str(key))

    def items(self):
        return self.backend.items(self.name)

    def purge_expired(self):
        """Drop expired entries now (SQLite; Redis does it by itself)."""
        return self.backend.purge_expired(self.name)

    def __repr__(self):
        return f"<Store {self.name} at {describe(self.url)}>"


def _expiry(expire):
    return None if expire is None else now() + float(expire)


# -- SQLite ------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    store   TEXT NOT NULL,
    key     TEXT NOT NULL,
    value   TEXT NOT NULL,
    expires REAL,
    PRIMARY KEY (store, key)
) WITHOUT ROWID
"""
_LIVE = "(expires IS NULL OR expires > ?)"

# Connections inherited through fork() (a fork the at-fork handlers did not
# see) or left for a file that was replaced: kept referenced, never closed.
_inherited = []


class SQLiteBackend:
    """One SQLite file in WAL mode; one connection per process."""

    def __init__(self, url):
        self.url = url
        self.path = url[len("sqlite:"):]
        self._connection = None
        self._pid = None
        self._file = None       # (st_dev, st_ino) of the file when opened
        # A worker serves one session at a time, but in-process tests run
        # several sessions in threads over the one connection.
        self._lock = threading.RLock()

    def _db(self):
        if self._connection is not None and self._pid == current_pid():
            if self._file == _file_id(self.path):
                return self._connection
            # The file was removed or replaced: write to the one there now.
            # The old connection is set aside unclosed, as closing it could
            # touch the -wal file of the new one.
        if self._connection is not None:
            _inherited.append(self._connection)
            self._connection = None
        db = None
        try:
            directory = os.path.dirname(self.path)
            if directory:
                os.makedirs(directory, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=SQLITE_BUSY_TIMEOUT,
                                 isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            if db is not None:
                _close(db)
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        self._connection, self._pid = db, current_pid()
        self._file = _file_id(self.path)
        return db

    def _discard(self):
        """Close this process's connection; the next operation opens one."""
        db, self._connection, self._file = self._connection, None, None
        if db is not None:
            _close(db)

    def _failed(self, db, exc=None):
        """After a failure: no transaction may stay open on the connection
        the next session gets. A SQLite error ``exc`` other than the busy
        timeout closes the connection too; ``exc`` None (the caller's own
        exception) keeps it."""
        if db is not self._connection:
            return
        if db.in_transaction:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                self._discard()
                return
        if exc is not None and not _is_busy(exc):
            self._discard()

    # fork: the parent closes its connection first (os.register_at_fork
    # below), so that no child inherits SQLite's state for an open file -
    # its locks would not be the child's, and SQLite shares that state with
    # every connection the child opens to the same file.

    def _before_fork(self):
        self._lock.acquire()
        if self._connection is not None and self._pid == current_pid():
            self._discard()

    def _after_fork_in_parent(self):
        self._lock.release()

    def _after_fork_in_child(self):
        self._lock = threading.RLock()

    def _run(self, work):
        """``work(db)`` inside one IMMEDIATE transaction."""
        with self._lock:
            db = self._db()
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    result = work(db)
                except sqlite3.Error:
                    raise
                except BaseException:
                    self._failed(db)
                    raise
                db.execute("COMMIT")
                return result
            except sqlite3.Error as exc:
                self._failed(db, exc)
                raise StoreError(f"{self.path}: {exc}") from exc

    def _read(self, sql, args):
        with self._lock:
            db = self._db()
            try:
                return db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                self._failed(db, exc)
                raise StoreError(f"{self.path}: {exc}") from exc

    def get(self, name, key):
        rows = self._read(
            f"SELECT value FROM entries WHERE store = ? AND key = ? AND {_LIVE}",
            (name, key, now()))
        return rows[0][0] if rows else None

    def set(self, name, key, value, expire):
        self._run(lambda db: _put(db, name, key, value, _expiry(expire)))

    def incr(self, name, key, amount, expire):
        def work(db):
            row = _live_row(db, name, key)
            try:
                current = int(row[0]) if row else 0
            except ValueError:
                raise StoreError(f"{name} {key}: value {row[0]!r} is not an integer")
            expires = _expiry(expire) if expire is not None else (row[1] if row else None)
            _put(db, name, key, str(current + amount), expires)
            return current + amount
        return self._run(work)

    def update(self, name, key, change, expire):
        def work(db):
            row = _live_row(db, name, key)
            old = row[0] if row else None
            new = change(old)
            if new is None:
                return old
            _put(db, name, key, str(new), _expiry(expire))
            return str(new)
        return self._run(work)

    def delete(self, name, key):
        def work(db):
            live = _live_row(db, name, key) is not None
            db.execute("DELETE FROM entries WHERE store = ? AND key = ?", (name, key))
            return live
        return self._run(work)

    def items(self, name):
        return iter(self._read(
            f"SELECT key, value FROM entries WHERE store = ? AND {_LIVE}", (name, now())))

    def purge_expired(self, name):
        return self._run(lambda db: db.execute(
            "DELETE FROM entries WHERE store = ? AND expires IS NOT NULL "
            "AND expires <= ?", (name, now())).rowcount)


def _before_fork():
    for backend in list(_backends.values()):
        if isinstance(backend, SQLiteBackend):
            backend._before_fork()


def _after_fork(child):
    for backend in list(_backends.values()):
        if isinstance(backend, SQLiteBackend):
            if child:
                backend._after_fork_in_child()
            else:
                backend._after_fork_in_parent()


os.register_at_fork(before=_before_fork,
                    after_in_parent=lambda: _after_fork(False),
                    after_in_child=lambda: _after_fork(True))


def _file_id(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _is_busy(exc):
    """The busy timeout ran out (another writer held the lock): nothing is
    wrong with the connection."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name:
        return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))
    return "locked" in str(exc) or "busy" in str(exc)


def _close(db):
    try:
        db.close()
    except sqlite3.Error:
        pass


def _live_row(db, name, key):
    return db.execute(
        f"SELECT value, expires FROM entries WHERE store = ? AND key = ? AND {_LIVE}",
        (name, key, now())).fetchone()


def _put(db, name, key, value, expires):
    db.execute("INSERT INTO entries (store, key, value, expires) VALUES (?, ?, ?, ?) "
               "ON CONFLICT (store, key) DO UPDATE SET value = excluded.value, "
               "expires = excluded.expires", (name, key, value, expires))


# -- Redis --------------------------------------------------------------------------

class RedisBackend:
    """One Redis database; keys are ``<store name>:<key>``."""

    def __init__(self, url):
        self.url = url
        self._client = None
        self._pid = None
        self._down_until = 0.0

    def _redis(self):
        if time.monotonic() < self._down_until:
            raise StoreError(f"{describe(self.url)}: unreachable, not retried yet")
        if self._client is None or self._pid != current_pid():
            import redis
            self._client = redis.Redis.from_url(
                self.url, socket_connect_timeout=REDIS_CONNECT_TIMEOUT,
                socket_timeout=REDIS_COMMAND_TIMEOUT, decode_responses=True)
            self._pid = current_pid()
        return self._client

    def _call(self, work):
        import redis
        try:
            return work(self._redis())
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._down_until = time.monotonic() + REDIS_RETRY_AFTER
            raise StoreError(f"{describe(self.url)}: {exc}") from exc
        except redis.RedisError as exc:
            raise StoreError(f"{describe(self.url)}: {exc}") from exc

    def get(self, name, key):
        return self._call(lambda r: r.get(f"{name}:{key}"))

    def set(self, name, key, value, expire):
        px = _milliseconds(expire)
        self._call(lambda r: r.set(f"{name}:{key}", value, px=px))

    def incr(self, name, key, amount, expire):
        def work(r):
            pipe = r.pipeline(transaction=True)
            pipe.incrby(f"{name}:{key}", amount)
            if expire is not None:
                pipe.pexpire(f"{name}:{key}", _milliseconds(expire))
            return pipe.execute()[0]
        import redis
        try:
            return self._call(work)
        except StoreError as exc:
            if isinstance(exc.__cause__, redis.ResponseError):
                raise StoreError(f"{name} {key}: value is not an integer") from exc
            raise

    def update(self, name, key, change, expire):
        import redis
        full = f"{name}:{key}"
        px = _milliseconds(expire)

        def work(r):
            deadline = time.monotonic() + REDIS_UPDATE_DEADLINE
            pause = 0.001
            with r.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        pipe.watch(full)
                        old = pipe.get(full)
                        new = change(old)
                        if new is None:
                            pipe.unwatch()
                            return old
                        pipe.multi()
                        pipe.set(full, str(new), px=px)
                        pipe.execute()
                        return str(new)
                    except redis.WatchError:
                        # Another writer won: back off a random while, so
                        # many writers of one key do not starve each other.
                        if time.monotonic() > deadline:
                            break
                        time.sleep(random.uniform(0, pause))
                        pause = min(pause * 2, 0.05)
            raise StoreError(f"{full}: too many concurrent writers, gave up")
        return self._call(work)

    def delete(self, name, key):
        return bool(self._call(lambda r: r.delete(f"{name}:{key}")))

    def items(self, name):
        prefix = f"{name}:"

        def work(r):
            keys = list(r.scan_iter(match=_glob_escape(prefix) + "*", count=1000))
            values = r.mget(keys) if keys else []
            return [(k[len(prefix):], v) for k, v in zip(keys, values) if v is not None]
        return iter(self._call(work))

    def purge_expired(self, name):
        return 0


def _milliseconds(expire):
    return None if expire is None else max(1, int(float(expire) * 1000))


def _glob_escape(text):
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


# -- keys ----------------------------------------------------------------------------

def ip_key(ip):
    """qpsmtpd's key for an IP address: the address as an unsigned integer
    in decimal (``192.0.2.1`` -> ``3221225985``); an IPv4 client seen as
    ``::ffff:192.0.2.1`` gets the IPv4 key. None for a non-address."""
    try:
        address = ipaddress.ip_address(str(ip or "").strip("[]").split("%")[0])
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(int(address))


def key_ip(key):
    """The IP address text for an ``ip_key`` (IPv4 when it fits in 32 bits,
    as qpsmtpd's keys do not say which family they came from)."""
    number = int(key)
    if number < 2 ** 32:
        return str(ipaddress.IPv4Address(number))
    return str(ipaddress.IPv6Address(number))


def parse_record(value, fields=4):
    """qpsmtpd's record text ``a:b:c:d`` -> a tuple of ``fields`` ints
    (karma's ``penalty:naughty:nice:connects``, greylisting's
    ``ts:new:black:white``); missing or malformed fields are 0."""
    parts = (value or "").split(":")
    numbers = []
    for index in range(fields):
        try:
            numbers.append(int(float(parts[index] or 0)))
        except (IndexError, ValueError):
            numbers.append(0)
    return tuple(numbers)
