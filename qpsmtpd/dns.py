"""DNS for plugins: one resolver per process, answers as plain lists.

The ``App`` builds one ``Resolver`` from the configuration (at start, and
again when SIGHUP rebuilds the App); plugins reach it as ``self.resolver``
and normally use the helpers of ``qpsmtpd.plugin.Plugin``
(``resolve_a(session, name)`` ...), which add the per-connection cache.

Configuration files:

  dns_servers   one name server per line: ``192.0.2.53``,
                ``192.0.2.53:5353``, ``2001:db8::53`` or
                ``[2001:db8::53]:5353`` (port 53 when none is given).
                Default: the ``nameserver`` lines of /etc/resolv.conf.
  dns_timeout   seconds one lookup may take in all, retries included
                (default 5; fractions allowed). A DNS plugin's ``timeout``
                argument overrides it for that plugin's lookups.
  dns_tries     attempts within that time, spread over the servers in
                turn (default 2): each attempt waits dns_timeout/dns_tries.

No search list and no default domain: every name is looked up as given,
absolute. Answers larger than a UDP datagram are asked again over TCP.

What a lookup returns: an ``Answer``, which is a list of the records as
text (see ``record_text``) plus how the lookup ended, ``status``:

  NOERROR   records found (the list is not empty)
  NODATA    the name exists but has no record of that type (empty list)
  NXDOMAIN  the name does not exist (also for names that cannot exist:
            empty labels, more than 255 octets)
  TEMPFAIL  no usable answer: timeout, SERVFAIL, REFUSED, no server
            reachable; ``answer.error`` says which (``timeout``,
            ``SERVFAIL`` ...)

A lookup never raises. Plugins that only want records use the list
(``if not answer``); plugins that must tell "does not exist" from "could
not find out" test ``answer.temporary`` / ``answer.status``.

How lookups run: no thread and no event loop. The queries are built with
``dns.message`` and sent as UDP datagrams from non-blocking sockets (one
per address family and batch, on a port the kernel picks at random; each
query has a random id); ``select.poll`` waits for the answers. An answer
counts only when it comes from a server the query was sent to and is a
response to it (id and question), anything else is dropped. A try that
gets no answer within dns_timeout/dns_tries is sent again, to the next
server; SERVFAIL, REFUSED and the like send the lookup to the next server
at once (the lookup fails when every server did so); an answer with the
TC bit is asked again over TCP from the same server (blocking, within the
try's time).

Concurrency: the lookups asked together (``lookup_many``) run at the same
time, so N lookups against a dead server cost one timeout, not N.
``start`` sends a batch and returns at once; the answers wait in the
sockets' receive buffers until ``PendingLookups.wait()`` reads them (so a
plugin can ask at connect and read at RCPT: ``dnsbl``). ``wait`` first
takes every answer already there, without waiting, then waits for the
others and makes the tries still due. The time between ``start`` and
``wait`` counts towards the first try only: when ``wait`` comes later than
dns_timeout/dns_tries after ``start``, the second try goes out when
``wait`` begins and the others follow on schedule. So ``wait`` blocks at
most max(the rest of the timeout, the timeout x (tries-1)/tries): never
more than one timeout, nothing for a lookup already answered, and nothing
at all with dns_tries 1 once the timeout has passed since ``start``.
``wait`` closes the batch's sockets; a batch never waited for closes them
when it is dropped (``PendingLookups.close``, also called on garbage
collection), e.g. with the connection whose notes held it.

``warm_up()`` is for a daemon's parent, before it forks: it loads the
record classes dnspython would otherwise import at a worker's first answer
and runs one batch against a socket of its own on 127.0.0.1, so each
worker finds that code loaded and already run (shared copy-on-write)
instead of paying for it at its first lookup.

Cache: per connection, in the connection note ``dns_cache`` (see
``connection_cache``), keyed by (name, type). Failures are cached too: a
name that timed out is not asked again in the same connection, so a dead
server costs each name at most one timeout per connection. At most
``CACHE_LIMIT`` answers are kept; later ones are simply not cached.
"""

import importlib
import ipaddress
import os
import select
import socket
import struct
import time

from .constants import LOGERROR, LOGWARN


class _Dnspython:
    """dnspython's modules, each imported at its first use: ``dns.message``
    and friends cost tens of milliseconds to import, and a session only
    needs them to read answers, so the per-connection program's greeting
    does not wait for them (a forking daemon imports them in ``warm_up``)."""

    def __getattr__(self, name):
        module = importlib.import_module("dns." + name)
        setattr(self, name, module)
        return module


dns = _Dnspython()

NOERROR = "NOERROR"
NODATA = "NODATA"
NXDOMAIN = "NXDOMAIN"
TEMPFAIL = "TEMPFAIL"

DEFAULT_TIMEOUT = 5.0
DEFAULT_TRIES = 2
CACHE_LIMIT = 2000
EDNS_PAYLOAD = 1232     # the size DNS operators agreed on (no fragmentation)
RESOLV_CONF = "/etc/resolv.conf"


class Answer(list):
    """The records of one lookup, as text, and how the lookup ended.

    ``name`` (as asked, without the final dot), ``rdtype`` (``'A'`` ...),
    ``status`` (``NOERROR``, ``NODATA``, ``NXDOMAIN``, ``TEMPFAIL``) and
    ``error`` (why a lookup failed, for log lines).
    """

    def __init__(self, name, rdtype, records=(), status=None, error=""):
        super().__init__(records)
        self.name = name
        self.rdtype = rdtype
        self.status = status or (NOERROR if self else NODATA)
        self.error = error

    @property
    def temporary(self):
        """True when the lookup could not be answered (try again later)."""
        return self.status == TEMPFAIL

    @property
    def reason(self):
        """Short text for log lines: ``timeout``, ``SERVFAIL``, ``NXDOMAIN``..."""
        if self.status == TEMPFAIL:
            return self.error or "temporary failure"
        if self.status == NXDOMAIN and self.error:
            return f"NXDOMAIN ({self.error})"
        return self.status

    def __repr__(self):
        return (f"<Answer {self.name} {self.rdtype} {self.status}"
                f"{' ' + self.error if self.error else ''} {list(self)!r}>")


class Resolver:
    """The process's stub resolver: name servers, timeout, tries.

    ``nameservers`` is a list of ``(ip, port)``; ``log`` a callable
    ``log(level, message)`` for the odd failure that is not the DNS's fault.
    """

    def __init__(self, nameservers, timeout=DEFAULT_TIMEOUT, tries=DEFAULT_TRIES,
                 log=None):
        if not nameservers:
            raise ValueError("no name servers")
        self.nameservers = [(str(ip), int(port)) for ip, port in nameservers]
        self.timeout = float(timeout)
        self.tries = max(1, int(tries))
        self._log = log
        # (family, socket address) to send to; the (address, port) an
        # answer must come from -> the indexes of the servers it may be
        self._servers = []
        self._by_address = {}
        for index, (ip, port) in enumerate(self.nameservers):
            address = ipaddress.ip_address(ip)
            family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
            self._servers.append((family, (ip, port)))
            self._by_address.setdefault((address, port), []).append(index)

    @classmethod
    def from_config(cls, config, log=None):
        """Build from ``dns_servers``, ``dns_timeout``, ``dns_tries``."""
        def warn(message):
            if log is not None:
                log(LOGWARN, message)

        servers = []
        for line in config.get_list("dns_servers"):
            server = parse_nameserver(line)
            if server is None:
                warn(f"dns_servers: ignoring invalid entry {line!r}")
            else:
                servers.append(server)
        if not servers:
            servers = system_nameservers()
        if not servers:
            warn("no name servers in dns_servers or /etc/resolv.conf, using 127.0.0.1")
            servers = [("127.0.0.1", 53)]
        timeout = _positive_number(config.get("dns_timeout"), DEFAULT_TIMEOUT, float,
                                   "dns_timeout", warn)
        tries = _positive_number(config.get("dns_tries"), DEFAULT_TRIES, int,
                                 "dns_tries", warn)
        return cls(servers, timeout, tries, log=log)

    def __repr__(self):
        servers = ", ".join(f"{ip}:{port}" for ip, port in self.nameservers)
        return f"<Resolver [{servers}] timeout={self.timeout} tries={self.tries}>"

    # -- lookups ------------------------------------------------------------------

    def lookup(self, name, rdtype="A", cache=None, timeout=None):
        """One lookup; an ``Answer``. ``cache`` is a per-connection dict."""
        return self.lookup_many([(name, rdtype)], cache, timeout)[0]

    def lookup_many(self, queries, cache=None, timeout=None):
        """Several ``(name, type)`` lookups at once; a list of ``Answer`` in
        the same order. Costs at most one ``timeout`` in all."""
        return self.start(queries, cache, timeout).wait()

    def start(self, queries, cache=None, timeout=None):
        """Send ``queries`` now and return ``PendingLookups`` at once;
        ``wait()`` reads the answers (see the module's notes for how long
        it may block)."""
        return PendingLookups(self, list(queries), cache,
                              self.timeout if timeout is None else float(timeout))

    def _server_indexes(self, peer):
        """The indexes of the servers at ``peer`` (a recvfrom address)."""
        try:
            return self._by_address.get((ipaddress.ip_address(peer[0]), peer[1]), ())
        except (ValueError, IndexError, TypeError):
            return ()

    def _log_error(self, message):
        if self._log is not None:
            self._log(LOGERROR, message)


class _Lookup:
    """One (name, type) of a batch on the wire."""

    __slots__ = ("key", "question", "wire", "sent", "turn", "asked", "failed", "answer")

    def __init__(self, key):
        self.key = key          # (name, type)
        self.question = None    # the question section (name, type, class) on the wire
        self.wire = None        # the whole query as sent
        self.sent = 0           # tries sent on schedule
        self.turn = 0           # the server the next datagram goes to
        self.asked = set()      # servers it was sent to (over UDP)
        self.failed = {}        # server index -> why it could not answer
        self.answer = None      # an Answer once the lookup has ended


class PendingLookups:
    """Lookups under way (``Resolver.start``); ``wait()`` returns the answers.

    Answers already in ``cache`` are used as they are; the others are sent
    at once, together. ``wait()`` takes the answers that arrived, waits for
    the rest as the module's notes say (at most one timeout), stores the
    answers in the cache, closes the sockets and returns the answers in the
    order asked (the same list on later calls). ``close()`` drops a batch
    without reading it; it also happens when the object is garbage.
    """

    _sockets = None
    _lookups = ()

    def __init__(self, resolver, queries, cache, timeout):
        self.queries = [(_normal_name(name), _normal_type(rdtype))
                        for name, rdtype in queries]
        self.timeout = timeout
        self.started = time.monotonic()
        self._resolver = resolver
        self._cache = cache
        self._answers = None
        self._sockets = {}      # family -> non-blocking UDP socket
        self._poll = None
        self._by_id = {}        # query id -> _Lookup
        self._end = self._step = None
        known = {}
        if cache is not None:
            for key in self.queries:
                if key in cache:
                    known[key] = cache[key]
        self._known = known
        self._lookups = [_Lookup(key) for key in
                         dict.fromkeys(k for k in self.queries if k not in known)]
        try:
            for lookup in self._lookups:
                self._prepare(lookup)
                if lookup.answer is None:
                    lookup.sent = 1
                    self._send(lookup)
        except Exception as exc:   # a bug here must not end the session
            self._broken(exc)

    # -- the answers ---------------------------------------------------------------

    def wait(self):
        if self._answers is not None:
            return self._answers
        try:
            self._collect()
        except Exception as exc:
            self._broken(exc)
        finally:
            self.close()
        fresh = {}
        for lookup in self._lookups:
            fresh[lookup.key] = lookup.answer if lookup.answer is not None else \
                Answer(*lookup.key, status=TEMPFAIL, error="timeout")
        if self._cache is not None:
            for key, answer in fresh.items():
                if len(self._cache) < CACHE_LIMIT:
                    self._cache[key] = answer
        found = {**self._known, **fresh}
        self._answers = [found[key] for key in self.queries]
        return self._answers

    def close(self):
        """Close the sockets (``wait`` does; a batch never waited for is
        closed when it is dropped). Answers not read by then are lost: a
        later ``wait()`` returns at once, those lookups TEMPFAIL
        ``cancelled``."""
        sockets, self._sockets = self._sockets, {}
        self._poll = None
        for sock in (sockets or {}).values():
            sock.close()
        for lookup in self._lookups:
            if lookup.answer is None:
                lookup.answer = Answer(*lookup.key, status=TEMPFAIL, error="cancelled")

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _broken(self, exc):
        self._resolver._log_error(f"DNS lookups failed: {exc!r}")
        for lookup in self._lookups:
            if lookup.answer is None:
                lookup.answer = Answer(*lookup.key, status=TEMPFAIL, error="resolver error")

    # -- the machinery ---------------------------------------------------------------

    def _prepare(self, lookup):
        """Build the query of ``lookup``, or end it when it cannot be asked."""
        name, rdtype = lookup.key
        if not name:
            lookup.answer = Answer(name, rdtype, status=NXDOMAIN, error="empty name")
            return
        try:
            qname = _name_wire(name)
        except Exception as exc:
            lookup.answer = Answer(name, rdtype, status=NXDOMAIN,
                                   error=f"invalid name: {exc}")
            return
        try:
            wanted = _type_number(rdtype)
        except dns.exception.DNSException as exc:
            error = str(exc) if type(exc) is dns.exception.DNSException \
                else type(exc).__name__
            lookup.answer = Answer(name, rdtype, status=TEMPFAIL, error=error)
            return
        query_id = _random_id()
        while query_id in self._by_id:
            query_id = _random_id()
        lookup.question = qname + _TYPE_CLASS.pack(wanted, _CLASS_IN)
        lookup.wire = _HEADER.pack(query_id, _FLAG_RD, 1, 0, 0, 1) + lookup.question + _OPT
        self._by_id[query_id] = lookup

    def _send(self, lookup):
        """Send ``lookup`` to the next server that has not failed it; when
        every server has, the lookup ends."""
        servers = self._resolver._servers
        for _ in range(len(servers)):
            index = lookup.turn % len(servers)
            lookup.turn += 1
            if index in lookup.failed:
                continue
            family, address = servers[index]
            try:
                self._socket(family).sendto(lookup.wire, address)
            except OSError as exc:
                lookup.failed[index] = exc.strerror or str(exc)
                continue
            lookup.asked.add(index)
            return
        self._give_up(lookup)

    def _give_up(self, lookup):
        reasons = ", ".join(dict.fromkeys(lookup.failed.values()))
        lookup.answer = Answer(*lookup.key, status=TEMPFAIL,
                               error=reasons or "no name server answered")

    def _socket(self, family):
        sock = self._sockets.get(family)
        if sock is None:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            self._sockets[family] = sock
            if self._poll is not None:
                self._poll.register(sock, select.POLLIN)
        return sock

    def _collect(self):
        """Read answers and send tries until every lookup has ended."""
        tries = self._resolver.tries
        step = self.timeout / tries
        now = time.monotonic()
        base = max(self.started, now - step)   # try n is due at base + n * step
        self._step, self._end = step, base + self.timeout
        self._poll = select.poll()
        for sock in self._sockets.values():
            self._poll.register(sock, select.POLLIN)
        while True:
            self._read()
            now = time.monotonic()
            pending = [lookup for lookup in self._lookups if lookup.answer is None]
            if not pending:
                return
            if now >= self._end:
                for lookup in pending:
                    lookup.answer = Answer(*lookup.key, status=TEMPFAIL, error="timeout")
                return
            wake = self._end
            for lookup in pending:
                if lookup.sent < tries and base + lookup.sent * step <= now:
                    lookup.sent += 1
                    self._send(lookup)
                if lookup.answer is None and lookup.sent < tries:
                    wake = min(wake, base + lookup.sent * step)
            self._poll.poll(max(0, int((wake - time.monotonic()) * 1000) + 1))

    def _read(self):
        """Take every datagram waiting in the sockets."""
        for sock in list(self._sockets.values()):
            while True:
                try:
                    data, peer = sock.recvfrom(65535)
                except OSError:    # nothing more (or an ICMP error): next socket
                    break
                self._datagram(data, peer)

    def _datagram(self, data, peer):
        if len(data) < 12:
            return
        lookup = self._by_id.get(int.from_bytes(data[:2], "big"))
        if lookup is None or lookup.answer is not None:
            return
        index = next((i for i in self._resolver._server_indexes(peer)
                      if i in lookup.asked), None)
        if index is None:          # not from a server this query went to
            return
        try:
            message = dns.message.from_wire(data, raise_on_truncation=True)
            truncated = False
        except dns.message.Truncated as exc:
            message, truncated = exc.message(), True
        except Exception:          # not a DNS message: dropped like a stray one
            return
        if not _answers_question(data, lookup.question):
            return
        if truncated:
            self._ask_over_tcp(lookup, index)
        else:
            self._answered(lookup, index, message)

    def _ask_over_tcp(self, lookup, index):
        deadline = min(self._end, time.monotonic() + self._step)
        try:
            wire = _tcp_exchange(self._resolver._servers[index], lookup.wire, deadline)
            message = dns.message.from_wire(wire)
            if wire[:2] != lookup.wire[:2] or not _answers_question(wire, lookup.question):
                raise dns.exception.FormError("not an answer to the query")
        except TimeoutError:
            self._server_failed(lookup, index, "timeout")
        except OSError as exc:
            self._server_failed(lookup, index, exc.strerror or str(exc))
        except Exception as exc:   # a malformed answer
            self._server_failed(lookup, index, type(exc).__name__)
        else:
            self._answered(lookup, index, message)

    def _answered(self, lookup, index, message):
        name, rdtype = lookup.key
        rcode = message.rcode()
        if rcode == dns.rcode.NXDOMAIN:
            lookup.answer = Answer(name, rdtype, status=NXDOMAIN)
        elif rcode == dns.rcode.YXDOMAIN:
            lookup.answer = Answer(name, rdtype, status=NXDOMAIN, error="YXDOMAIN")
        elif rcode != dns.rcode.NOERROR:
            self._server_failed(lookup, index, dns.rcode.to_text(rcode))
        else:
            try:
                rrset = message.resolve_chaining().answer
            except dns.exception.DNSException as exc:   # a CNAME chain too long ...
                self._server_failed(lookup, index, type(exc).__name__)
                return
            try:
                records = [record_text(rdata) for rdata in _sorted(rrset)] \
                    if rrset is not None else []
            except Exception as exc:
                self._resolver._log_error(f"DNS lookup of {name} {rdtype} failed: {exc!r}")
                lookup.answer = Answer(name, rdtype, status=TEMPFAIL, error="resolver error")
                return
            lookup.answer = Answer(name, rdtype, records)

    def _server_failed(self, lookup, index, reason):
        """``index`` cannot answer ``lookup``: on to the next server at once."""
        lookup.failed[index] = reason
        if len(lookup.failed) >= len(self._resolver._servers):
            self._give_up(lookup)
        else:
            self._send(lookup)


def _tcp_exchange(server, wire, deadline):
    """Send ``wire`` to ``server`` over TCP, return the answer's wire;
    ``TimeoutError`` at ``deadline`` (a ``time.monotonic()`` value)."""
    family, address = server

    def left():
        seconds = deadline - time.monotonic()
        if seconds <= 0:
            raise TimeoutError("timeout")
        return seconds

    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(left())
        sock.connect(address)
        sock.settimeout(left())
        sock.sendall(struct.pack("!H", len(wire)) + wire)

        def read(size):
            data = b""
            while len(data) < size:
                sock.settimeout(left())
                chunk = sock.recv(size - len(data))
                if not chunk:
                    raise ConnectionResetError("connection closed by the server")
                data += chunk
            return data

        return read(struct.unpack("!H", read(2))[0])


# -- helpers ---------------------------------------------------------------------

_WARM_RECORDS = {"A": "192.0.2.1", "AAAA": "2001:db8::1", "MX": "10 mx.example.",
                 "NS": "ns.example.", "PTR": "host.example.", "CNAME": "host.example.",
                 "TXT": '"v=spf1 -all"'}
_warmed = False


def warm_up():
    """Prepare this process for lookups (for a daemon's parent, before it
    forks and before ``gc.freeze()``; only the first call does anything).

    Loads the record classes of the common types (dnspython loads them at
    the first answer of each type) and runs one batch of lookups, one per
    type, against a UDP socket of its own on 127.0.0.1 that answers from
    made-up records: every path of a lookup has then run once in the
    parent. Never raises; without a loopback interface it does less.
    """
    global _warmed
    if _warmed:
        return
    _warmed = True
    try:
        import dns.exception
        import dns.flags
        import dns.message
        import dns.name
        import dns.rcode
        import dns.rdata
        import dns.rdataclass
        import dns.rdatatype
        import dns.rrset
        for rdtype in list(_WARM_RECORDS) + ["SOA", "OPT"]:
            dns.rdata.get_rdata_class(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
            server.bind(("127.0.0.1", 0))
            server.settimeout(1)
            resolver = Resolver([server.getsockname()], timeout=1, tries=1)
            pending = resolver.start([("warm-up.invalid", rdtype) for rdtype in _WARM_RECORDS]
                                     + [("nx.warm-up.invalid", "A")])
            for _ in range(len(_WARM_RECORDS) + 1):
                data, peer = server.recvfrom(65535)
                query = dns.message.from_wire(data)
                response = dns.message.make_response(query)
                question = query.question[0]
                rdtype = dns.rdatatype.to_text(question.rdtype)
                if question.name.labels[0] == b"nx":
                    response.set_rcode(dns.rcode.NXDOMAIN)
                else:
                    response.answer.append(dns.rrset.from_text(
                        question.name, 60, "IN", rdtype, _WARM_RECORDS[rdtype]))
                server.sendto(response.to_wire(), peer)
            pending.wait()
    except Exception:      # only an optimisation
        pass


def connection_cache(connection):
    """The answer cache of ``connection`` (its note ``dns_cache``), or None."""
    if connection is None:
        return None
    return connection.notes.setdefault("dns_cache", {})


def reverse_name(ip, resolver, cache=None, confirm=False, timeout=None):
    """The host name of ``ip`` (its first PTR name), or None.

    With ``confirm`` only a name whose A/AAAA records include ``ip``
    counts (forward-confirmed); every PTR name is checked, at once. A
    timeout or SERVFAIL gives None, like a missing PTR. For the peer's
    ``remote_host``: the daemon calls this once per connection with the
    connection's cache, so plugins asking the same PTR get it for free.
    """
    address = ip_address(ip)
    if address is None:
        return None
    names = resolver.lookup(ptr_name(address), "PTR", cache, timeout)
    if not confirm:
        return names[0] if names else None
    wanted = "AAAA" if address.version == 6 else "A"
    forward = resolver.lookup_many([(name, wanted) for name in names], cache, timeout)
    for name, addresses in zip(names, forward):
        if any(ip_address(found) == address for found in addresses):
            return name
    return None


def ptr_name(ip):
    """``10.2.0.192.in-addr.arpa`` for 192.0.2.10 (nibbles for IPv6)."""
    address = ip_address(ip)
    if address is None:
        raise ValueError(f"not an IP address: {ip!r}")
    return address.reverse_pointer


def reverse_ip(ip):
    """The address as a DNS list queries it: ``10.2.0.192`` for 192.0.2.10,
    32 dot-separated nibbles in reverse order for IPv6; None when ``ip`` is
    not an address."""
    address = ip_address(ip)
    if address is None:
        return None
    return ptr_name(address).rsplit(".", 2)[0]


def ip_address(text):
    """``ipaddress`` object for ``text`` (brackets, ``IPv6:`` tag and
    ``%zone`` allowed; IPv4-mapped IPv6 becomes IPv4), or None."""
    text = str(text or "").strip().strip("[]")
    if text[:5].lower() == "ipv6:":
        text = text[5:]
    try:
        address = ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def same_network(first, second):
    """True when two addresses share their /24 (IPv4) or /96 (IPv6): the
    loose "same server farm" match of qpsmtpd's helo and fcrdns."""
    a, b = ip_address(first), ip_address(second)
    if a is None or b is None or a.version != b.version:
        return False
    bits = 24 if a.version == 4 else 96
    return ipaddress.ip_network(f"{a}/{bits}", strict=False) == \
        ipaddress.ip_network(f"{b}/{bits}", strict=False)


def record_text(rdata):
    """One record as text: addresses for A/AAAA; names without the final
    dot for MX (the exchange; ``.`` for a null MX), NS, PTR, CNAME; the
    character strings of a TXT record joined without separator (as SPF and
    DKIM read them), decoded as UTF-8; ``to_text()`` for other types."""
    rdtype = rdata.rdtype
    if rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        return rdata.address
    if rdtype == dns.rdatatype.MX:
        return _name_text(rdata.exchange)
    if rdtype in (dns.rdatatype.NS, dns.rdatatype.PTR, dns.rdatatype.CNAME):
        return _name_text(rdata.target)
    if rdtype in (dns.rdatatype.TXT, dns.rdatatype.SPF):
        return b"".join(rdata.strings).decode("utf-8", "replace")
    return rdata.to_text()


def parse_nameserver(text):
    """``(ip, port)`` from a dns_servers line, or None when it is not one."""
    text = str(text).strip()
    port = 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                return None
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host = text
    try:
        port = int(port)
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if not 0 < port < 65536:
        return None
    return str(address), port


def system_nameservers(path=RESOLV_CONF):
    """``(ip, port)`` for each ``nameserver`` line of /etc/resolv.conf (may
    be empty)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as lines:
            tokens = [line.split() for line in lines]
    except OSError:
        return []
    servers = []
    for words in tokens:
        if len(words) >= 2 and words[0] == "nameserver":
            parsed = parse_nameserver(words[1])
            if parsed is not None:
                servers.append(parsed)
    return servers


def _sorted(rrset):
    if rrset.rdtype == dns.rdatatype.MX:
        return sorted(rrset, key=lambda rdata: rdata.preference)
    return list(rrset)


def _name_text(name):
    if name == dns.name.root:
        return "."
    return name.to_text(omit_final_dot=True)


# -- the query on the wire (RFC 1035 4.1, EDNS0 RFC 6891) ------------------------
#
# Built by hand: dnspython's make_query() + to_wire() cost about 250 us per
# query, which dnsbl pays before the greeting; this costs a few. Answers are
# still parsed by dnspython.

_HEADER = struct.Struct("!HHHHHH")     # id, flags, qd, an, ns, ar counts
_TYPE_CLASS = struct.Struct("!HH")
_FLAG_RD = 0x0100
_FLAG_QR = 0x8000
_CLASS_IN = 1
# The OPT record: root name, type 41, our UDP payload size, no flags.
_OPT = b"\0" + struct.pack("!HHIH", 41, EDNS_PAYLOAD, 0, 0)
_LDH = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
_TYPE_NUMBERS = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15,
                 "TXT": 16, "AAAA": 28, "SRV": 33, "SPF": 99}


def _name_wire(name):
    """``name`` (absolute, no trailing dot) in wire format. Plain host
    names are encoded here; anything else (escapes, non-ASCII, a label too
    long, an empty label) goes through dnspython, which encodes IDNA names
    and raises its usual errors."""
    if name.isascii():
        encoded = name.encode("ascii")
        labels = encoded.split(b".")
        if len(encoded) < 254 and all(0 < len(label) < 64 and _LDH.issuperset(label)
                                      for label in labels):
            return b"".join(bytes((len(label),)) + label for label in labels) + b"\0"
    return dns.name.from_text(name).to_wire()


def _type_number(rdtype):
    """The number of a record type given as text; dnspython's errors for
    unknown types and meta-types."""
    number = _TYPE_NUMBERS.get(rdtype)
    if number is None:
        number = dns.rdatatype.from_text(rdtype)
        if dns.rdatatype.is_metatype(number):
            raise dns.exception.DNSException("NoMetaqueries")
    return number


def _random_id():
    return int.from_bytes(os.urandom(2), "big")


def _answers_question(wire, question):
    """True when ``wire`` (a DNS message whose id matched) is a response to
    a standard query with exactly ``question`` in its question section
    (names compared without regard to case, as RFC 4343 asks)."""
    if len(wire) < 12 + len(question):
        return False
    flags, questions = struct.unpack_from("!HH", wire, 2)
    if not flags & _FLAG_QR or flags & 0x7800 or questions != 1:
        return False
    end = 12 + len(question)
    return (wire[12:end - 4].lower() == question[:-4].lower()
            and wire[end - 4:end] == question[-4:])


def _normal_name(name):
    return str(name or "").strip().rstrip(".").lower()


def _normal_type(rdtype):
    if isinstance(rdtype, int):
        return dns.rdatatype.to_text(rdtype)
    return str(rdtype).upper()


def _positive_number(value, default, kind, name, warn):
    if value is None or str(value).strip() == "":
        return default
    try:
        number = kind(str(value).strip())
    except ValueError:
        number = 0
    if number <= 0:
        warn(f"{name}: invalid value {value!r}, using {default}")
        return default
    return number
