"""A DNS server for tests: zone data from the test, UDP and TCP on 127.0.0.1.

It answers like the recursive server a mail host talks to: the records a
test gives, CNAME chains followed within the data, NXDOMAIN for unknown
names, and on request SERVFAIL, REFUSED, silence (no answer at all, for
timeouts), a delay, or a truncated UDP answer (the client must retry over
TCP). Every query is logged, so a test can assert that a lookup was or was
not made.

Fixtures (a test module loads them with ``pytest_plugins =
["dns_fixtures"]``):

* ``dns_server`` — one server per test module (random port, UDP and TCP);
* ``dns`` — the same server, emptied before each test.

Zone data::

    dns.add("mx.example.com", "A", "192.0.2.25", "192.0.2.26")
    dns.add("example.com", "MX", (10, "mx.example.com"))
    dns.add("example.com", "TXT", "v=spf1 -all", ["two ", "strings"])
    dns.add("www.example.com", "CNAME", "mx.example.com")
    dns.ptr("192.0.2.10", "client.example.net")
    dns.set_zone({"a.example": {"A": ["192.0.2.1"]}})   # replaces everything

A TXT value is one string (split into 255-octet strings when longer) or a
list of strings. Modes take names; ``*.zone`` means every name below zone::

    dns.servfail("broken.example")      dns.refuse("*.refused.example")
    dns.drop("*.dead.example")          dns.drop_all()
    dns.delay("slow.example", 0.5)      dns.tcp_only("big.example")
    dns.forge("spoofed.example", "id")

``forge(name, how)`` answers a UDP query twice: first a forged answer the
client must ignore (records ``FORGED_A`` / ``FORGED_TXT``; ``how`` is
``id``: another query id, ``address``: sent from another port, or
``question``: for another name), then 0.2 s later the true one.

``dns.queries`` lists ``Query(name, rdtype, proto)``; ``dns.asked(name,
rdtype=None)`` tells whether a name was asked. ``dns.config(timeout=1,
tries=1)`` is the configuration that points an App at this server.

``dns_session(plugins, config=None, timeout=1, **connection)`` starts a
real SMTP session (conftest's ``smtp_session``) whose App asks this server,
with ``plugins`` followed by ``rcpt_ok`` (rcpthosts: example.org) and the
test plugin ``capture``; ``client.queued()`` returns the messages that
reached the queue, as bytes. ``elapsed(function, *args)`` (a fixture)
returns ``(result, seconds)``; ``more_dns_servers(host="127.0.0.1")``
starts further servers for one test.
"""

import ipaddress
import os
import socket
import struct
import threading
import time
from typing import NamedTuple

import pytest
from dnslib import (AAAA, CNAME, MX, NS, PTR, QTYPE, RCODE, RR, TXT, A, DNSQuestion,
                    DNSRecord)

TTL = 60
FORGED_A = "192.0.2.66"
FORGED_TXT = "forged"
FORGE_DELAY = 0.2
CNAME_LIMIT = 8
HERE = os.path.dirname(os.path.abspath(__file__))
PLUGIN_DIRS = [os.path.join(HERE, "plugins"), os.path.join(os.path.dirname(HERE), "plugins")]


class Query(NamedTuple):
    name: str
    rdtype: str
    proto: str


class DNSTestServer:
    """The server; ``start()`` binds UDP and TCP on one port of ``host``."""

    def __init__(self, host="127.0.0.1"):
        self.host = host
        self.port = None
        self.queries = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads = []
        self._open = []
        self._forger = None      # the socket forged answers come from ("address")
        self.reset()

    # -- life cycle -----------------------------------------------------------

    def start(self):
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        for _ in range(20):
            udp = socket.socket(family, socket.SOCK_DGRAM)
            udp.bind((self.host, 0))
            port = udp.getsockname()[1]
            tcp = socket.socket(family, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind((self.host, port))
            except OSError:
                udp.close()
                tcp.close()
                continue
            break
        else:
            raise RuntimeError("no free port for UDP and TCP")
        tcp.listen(16)
        udp.settimeout(0.2)
        tcp.settimeout(0.2)
        self.port, self._udp, self._tcp = port, udp, tcp
        for target in (self._serve_udp, self._serve_tcp):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self):
        self._stopping.set()
        for thread in self._threads:
            thread.join(2)
        for sock in [self._udp, self._tcp] + self._open + [self._forger]:
            if sock is None:
                continue
            try:
                sock.close()
            except OSError:
                pass

    def reset(self):
        """Forget all records, modes and logged queries."""
        with self._lock:
            self.records = {}
            self.modes = {}          # name or *.suffix -> (mode, argument)
            self.everything = None   # a mode for every name
            self.queries = []

    # -- zone data -----------------------------------------------------------

    def set_zone(self, zone):
        """Replace the records: ``{name: {type: [values]}}``."""
        with self._lock:
            self.records = {}
        for name, types in zone.items():
            for rdtype, values in types.items():
                if isinstance(values, (str, tuple)):
                    values = [values]
                self.add(name, rdtype, *values)
        return self

    def add(self, name, rdtype, *values):
        rdtype = rdtype.upper()
        if rdtype not in _RDATA:
            raise ValueError(f"unsupported type {rdtype}")
        with self._lock:
            node = self.records.setdefault(_key(name), {})
            node.setdefault(rdtype, []).extend(values)
        return self

    def ptr(self, ip, *names):
        return self.add(ipaddress.ip_address(ip).reverse_pointer, "PTR", *names)

    # -- modes ------------------------------------------------------------------

    def servfail(self, *names):
        return self._mode(names, "servfail")

    def refuse(self, *names):
        return self._mode(names, "refused")

    def drop(self, *names):
        """Never answer these names (UDP or TCP): the client times out."""
        return self._mode(names, "drop")

    def drop_all(self):
        with self._lock:
            self.everything = ("drop", None)
        return self

    def delay(self, name, seconds):
        return self._mode([name], "delay", seconds)

    def forge(self, name, how="id"):
        """Answer ``name`` over UDP first with a forged answer (``how``:
        ``id``, ``address`` or ``question``), then with the true one."""
        if how not in ("id", "address", "question"):
            raise ValueError(f"unknown forgery {how}")
        return self._mode([name], "forge", how)

    def tcp_only(self, *names):
        """Answer these over UDP with the TC bit and no records."""
        return self._mode(names, "tcp_only")

    def _mode(self, names, mode, argument=None):
        with self._lock:
            for name in names:
                self.modes[_key(name)] = (mode, argument)
        return self

    # -- for assertions ------------------------------------------------------------

    def asked(self, name, rdtype=None):
        name = _key(name)
        return any(q.name == name and (rdtype is None or q.rdtype == rdtype.upper())
                   for q in list(self.queries))

    def config(self, timeout=1, tries=1):
        """Config files pointing an App at this server."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return {"dns_servers": f"{host}:{self.port}", "dns_timeout": str(timeout),
                "dns_tries": str(tries)}

    # -- serving -----------------------------------------------------------------

    def _serve_udp(self):
        while not self._stopping.is_set():
            try:
                data, peer = self._udp.recvfrom(65535)
            except (socket.timeout, OSError):
                continue
            self._answer(data, "udp", lambda wire, peer=peer: self._udp.sendto(wire, peer),
                         peer)

    def _serve_tcp(self):
        while not self._stopping.is_set():
            try:
                conn, _ = self._tcp.accept()
            except (socket.timeout, OSError):
                continue
            self._open.append(conn)
            threading.Thread(target=self._tcp_client, args=(conn,), daemon=True).start()

    def _tcp_client(self, conn):
        conn.settimeout(0.2)
        buffer = b""
        while not self._stopping.is_set():
            try:
                chunk = conn.recv(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            if not chunk:
                conn.close()
                return
            buffer += chunk
            while len(buffer) >= 2 and len(buffer) >= 2 + struct.unpack("!H", buffer[:2])[0]:
                size = struct.unpack("!H", buffer[:2])[0]
                message, buffer = buffer[2:2 + size], buffer[2 + size:]
                self._answer(message, "tcp",
                             lambda wire: _send_quietly(conn, struct.pack("!H", len(wire)) + wire))

    def _answer(self, data, proto, send, peer=None):
        try:
            request = DNSRecord.parse(data)
            question = request.questions[0]
        except Exception:
            return
        name = _key(str(question.qname))
        rdtype = QTYPE.get(question.qtype)
        with self._lock:
            self.queries.append(Query(name, rdtype, proto))
            mode, argument = self._mode_for(name)
        if mode == "drop":
            return
        reply = request.reply()
        if mode == "servfail":
            reply.header.rcode = RCODE.SERVFAIL
        elif mode == "refused":
            reply.header.rcode = RCODE.REFUSED
        elif mode == "tcp_only" and proto == "udp":
            reply.header.tc = 1
        else:
            self._fill(reply, name, rdtype)
        wire = reply.pack()
        if proto == "udp" and len(wire) > _udp_limit(request):
            truncated = request.reply()
            truncated.header.tc = 1
            wire = truncated.pack()
        if mode == "delay":
            threading.Timer(argument, send, args=(wire,)).start()
        elif mode == "forge" and proto == "udp":
            self._send_forged(request, name, rdtype, argument, send, peer)
            threading.Timer(FORGE_DELAY, send, args=(wire,)).start()
        else:
            send(wire)

    def _send_forged(self, request, name, rdtype, how, send, peer):
        forged = request.reply()
        if how == "question":
            name = "forged." + name
            forged.questions = [DNSQuestion(name, request.q.qtype)]
        if rdtype == "TXT":
            forged.add_answer(RR(name, QTYPE.TXT, rdata=_txt(FORGED_TXT), ttl=TTL))
        else:
            forged.add_answer(RR(name, QTYPE.A, rdata=A(FORGED_A), ttl=TTL))
        if how == "id":
            forged.header.id = (request.header.id + 1) % 65536
        wire = forged.pack()
        if how == "address":
            with self._lock:
                if self._forger is None:
                    family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
                    self._forger = socket.socket(family, socket.SOCK_DGRAM)
                    self._forger.bind((self.host, 0))
            self._forger.sendto(wire, peer)
        else:
            send(wire)

    def _mode_for(self, name):
        if self.everything is not None:
            return self.everything
        if name in self.modes:
            return self.modes[name]
        labels = name.split(".")
        for index in range(1, len(labels)):
            suffix = "*." + ".".join(labels[index:])
            if suffix in self.modes:
                return self.modes[suffix]
        return None, None

    def _fill(self, reply, name, rdtype):
        with self._lock:
            records = {n: {t: list(v) for t, v in types.items()}
                       for n, types in self.records.items()}
        for _ in range(CNAME_LIMIT):
            node = records.get(name)
            if node is None:
                below = any(other.endswith("." + name) for other in records)
                if not below:
                    reply.header.rcode = RCODE.NXDOMAIN
                return
            if "CNAME" in node and rdtype != "CNAME":
                target = _key(node["CNAME"][0])
                reply.add_answer(RR(name, QTYPE.CNAME, rdata=CNAME(target), ttl=TTL))
                name = target
                continue
            for value in node.get(rdtype, ()):
                reply.add_answer(RR(name, getattr(QTYPE, rdtype),
                                    rdata=_RDATA[rdtype](value), ttl=TTL))
            return


def _txt(value):
    if isinstance(value, (list, tuple)):
        parts = [p.encode() if isinstance(p, str) else p for p in value]
    else:
        raw = value.encode() if isinstance(value, str) else value
        parts = [raw[i:i + 255] for i in range(0, len(raw), 255)] or [b""]
    return TXT(parts)


def _mx(value):
    preference, exchange = value if isinstance(value, tuple) else (10, value)
    return MX(exchange, preference)


_RDATA = {"A": A, "AAAA": AAAA, "MX": _mx, "TXT": _txt, "PTR": PTR,
          "CNAME": CNAME, "NS": NS}


def _key(name):
    return str(name).strip().rstrip(".").lower()


def _udp_limit(request):
    for record in request.ar:
        if record.rtype == QTYPE.OPT:
            return max(512, record.rclass)
    return 512


def _send_quietly(conn, data):
    try:
        conn.sendall(data)
    except OSError:
        pass


@pytest.fixture(scope="module")
def dns_server():
    server = DNSTestServer().start()
    yield server
    server.stop()


@pytest.fixture
def dns(dns_server):
    dns_server.reset()
    yield dns_server
    dns_server.reset()


@pytest.fixture
def dns_session(dns, make_app, smtp_session, tmp_path):
    def factory(plugins, config=None, timeout=1, **connection):
        queue = tmp_path / "queue"
        files = {**dns.config(timeout=timeout), "rcpthosts": ["example.org"]}
        files.update(config or {})
        app = make_app(list(plugins) + ["rcpt_ok", f"capture {queue}"], files,
                       plugin_dirs=PLUGIN_DIRS)
        client = smtp_session(app=app, **connection)
        client.queued = lambda: queued(queue)
        return client
    return factory


@pytest.fixture
def more_dns_servers():
    servers = []

    def factory(host="127.0.0.1"):
        server = DNSTestServer(host).start()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture
def elapsed():
    return timed


def queued(queue):
    """The messages ``capture`` wrote to ``queue``, as bytes, in order."""
    if not queue.is_dir():
        return []
    count = len([n for n in os.listdir(queue) if n.endswith(".eml")])
    return [(queue / f"{n}.eml").read_bytes() for n in range(count)]


def timed(function, *args, **kwargs):
    """``(result, seconds)`` of calling ``function``."""
    started = time.monotonic()
    result = function(*args, **kwargs)
    return result, time.monotonic() - started
