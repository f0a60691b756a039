"""Fixtures for the state store and the reputation plugins.

* ``redis_server`` (module scope): a real ``redis-server`` on an ephemeral
  loopback port, in a temporary directory, persistence off (``--save ''``);
  its base URL ``redis://127.0.0.1:<port>``. Skips when Debian's
  redis-server is not installed.
* ``store_url`` (parametrised: ``sqlite`` and ``redis``): a fresh, empty
  store URL for one test - a new SQLite file, or the module's Redis with
  database 0 flushed.
* ``fake_clock``: replaces ``qpsmtpd.store.clock`` in this process with a
  ``FakeClock`` (``.advance(seconds)``).
* ``shift_clock_file(path, seconds)``: for daemons (real processes) started
  with ``QPSMTPD_FAKE_CLOCK_FILE=path``: their clock runs ``seconds`` ahead.
* ``make_mmdb(path, networks)``: a MaxMind DB file written by mmdb-writer,
  City edition; ``networks`` maps a network to ``(country, country name,
  continent, city, latitude, longitude)``.
* ``write_evidence_plugin(directory)``: writes ``evidence.py``, a test-only
  plugin that adds karma and defers rejections the way the DNS plugins do
  (see its docstring), and returns the directory.

Import the fixtures you use into the test module:
``from store_fixtures import redis_server, store_url  # noqa: F401``.
"""

import os
import shutil
import socket
import subprocess
import time

import pytest

from qpsmtpd import store as store_module

REDIS_SERVER = shutil.which("redis-server")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A redis-server process of our own."""

    def __init__(self, directory):
        self.directory = str(directory)
        for _ in range(5):
            self.port = free_port()
            self.proc = subprocess.Popen(
                [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--dir", self.directory,
                 "--protected-mode", "no", "--loglevel", "warning"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if self._wait():
                return
            self.stop()
        raise RuntimeError("redis-server did not start")

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"

    def _wait(self):
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return True
            except OSError:
                time.sleep(0.05)
        return False

    def flush(self):
        import redis
        redis.Redis(host="127.0.0.1", port=self.port).flushall()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    if not REDIS_SERVER:
        pytest.skip("redis-server is not installed (Debian package redis-server)")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, tmp_path):
    """A fresh store URL on each backend."""
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'db' / 'qpsmtpd.sqlite'}"
    server = request.getfixturevalue("redis_server")
    server.flush()
    return server.url + "/0"


class FakeClock:
    """A clock tests move by hand; starts at a fixed, realistic epoch."""

    def __init__(self, start=1_700_000_000.0):
        self.now = float(start)

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds
        return self.now


@pytest.fixture
def fake_clock(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(store_module, "clock", clock)
    return clock


def shift_clock_file(path, seconds):
    with open(path, "w") as handle:
        handle.write(f"{seconds}\n")


def make_mmdb(path, networks, database_type="GeoLite2-City"):
    """Write a MaxMind DB: ``networks`` = {cidr: (country, country_name,
    continent, city, latitude, longitude)}; None leaves a field out."""
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet
    writer = MMDBWriter(ip_version=6, database_type=database_type,
                        languages=["en"], ipv4_compatible=True)
    for network, (country, name, continent, city, latitude, longitude) in networks.items():
        record = {"country": {"iso_code": country}, "continent": {"code": continent}}
        if name:
            record["country"]["names"] = {"en": name}
        if city and "City" in database_type:
            record["city"] = {"names": {"en": city}}
        if latitude is not None and "City" in database_type:
            record["location"] = {"latitude": float(latitude),
                                  "longitude": float(longitude)}
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))
    return str(path)


EVIDENCE_PLUGIN = '''"""evidence - test only: the verdicts of DNS checks, without DNS.

Arguments: ``connect_karma N`` (adjust_karma at connect, like fcrdns),
``listed <message>`` (like dnsbl with ``reject naughty``: karma -1 and a
deferred rejection ``(evidence) <message>``; underscores become spaces),
``mark 1`` (``is_naughty(1)``: flagged without a message),
``disconnect_karma N`` (adjust_karma when the connection ends, before
karma records it - list evidence before karma), ``note.<name> <value>``
(a connection note, set at connect), ``p0f genre:Windows,distance:12``
(a p0f note as ident/p0f leaves it).
"""

from qpsmtpd.plugin import Plugin


class Evidence(Plugin):
    def register(self, *args):
        self.args = self.parse_args(args, {"reject": "naughty"})

    def hook_connect(self, session):
        if self.is_immune(session):
            return None
        if "connect_karma" in self.args:
            self.adjust_karma(session, int(self.args["connect_karma"]))
        if "listed" in self.args:
            self.adjust_karma(session, -1)
            self.get_reject(session, self.args["listed"].replace("_", " "), "listed")
        if "mark" in self.args:
            self.is_naughty(session, int(self.args["mark"]))
        notes = session.connection.notes
        for key, value in self.args.items():
            if key.startswith("note."):
                notes[key[5:]] = value
        if "p0f" in self.args:
            fields = dict(pair.split(":", 1) for pair in self.args["p0f"].split(","))
            for key in ("distance", "uptime"):
                if key in fields:
                    fields[key] = int(fields[key])
            notes["p0f"] = fields
        return None

    def hook_disconnect(self, session):
        if "disconnect_karma" in self.args:
            self.adjust_karma(session, int(self.args["disconnect_karma"]))
        return None
'''


def write_evidence_plugin(directory):
    os.makedirs(str(directory), exist_ok=True)
    with open(os.path.join(str(directory), "evidence.py"), "w") as handle:
        handle.write(EVIDENCE_PLUGIN)
    return str(directory)
