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

Cost and concurrency: the lookups a plugin asks together
(``lookup_many``) run at the same time, so N lookups against a dead server
cost one timeout, not N. They run on dnspython's asyncio resolver, each
batch in its own short-lived event loop, in the calling thread; ``start``
runs a batch in one background thread instead, so a plugin can ask at
connect and read the answers at RCPT (``dnsbl``). A worker process stays
single-threaded except for such a batch, which ends by itself within its
timeout.

Cache: per connection, in the connection note ``dns_cache`` (see
``connection_cache``), keyed by (name, type). Failures are cached too: a
name that timed out is not asked again in the same connection, so a dead
server costs each name at most one timeout per connection. At most
``CACHE_LIMIT`` answers are kept; later ones are simply not cached.
"""

import asyncio
import ipaddress
import threading
import time

import dns._asyncio_backend  # noqa: F401  (loaded in the parent, not per worker)
import dns.asyncbackend
import dns.asyncresolver
try:
    import sniffio  # noqa: F401  (dnspython asks it which event loop runs)
except ImportError:
    pass
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.reversename

from .constants import LOGERROR, LOGWARN

NOERROR = "NOERROR"
NODATA = "NODATA"
NXDOMAIN = "NXDOMAIN"
TEMPFAIL = "TEMPFAIL"

DEFAULT_TIMEOUT = 5.0
DEFAULT_TRIES = 2
CACHE_LIMIT = 2000
EDNS_PAYLOAD = 1232     # the size DNS operators agreed on (no fragmentation)
_GRACE = 0.1            # how much longer than its timeout a background batch may take


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
        return self.start(queries, cache, timeout, background=False).wait()

    def start(self, queries, cache=None, timeout=None, background=True):
        """Begin ``queries`` now and return ``PendingLookups``; ``wait()``
        gives the answers. With ``background`` the lookups run in a thread
        while the caller carries on."""
        return PendingLookups(self, list(queries), cache,
                              self.timeout if timeout is None else float(timeout),
                              background)

    # -- the machinery ---------------------------------------------------------------

    def _run_batch(self, keys, timeout):
        """Answers for ``keys`` ((name, type) pairs, normalised); never raises."""
        if not keys:
            return []
        try:
            return asyncio.run(self._batch(keys, timeout))
        except Exception as exc:   # a bug here must not end the session
            self._log_error(f"DNS lookups failed: {exc!r}")
            return [Answer(name, rdtype, status=TEMPFAIL, error="resolver error")
                    for name, rdtype in keys]

    async def _batch(self, keys, timeout):
        stub = self._stub(timeout)
        tasks = [asyncio.ensure_future(self._one(stub, name, rdtype))
                 for name, rdtype in keys]
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        answers = []
        for task, (name, rdtype) in zip(tasks, keys):
            if task in done:
                answers.append(task.result())
            else:
                answers.append(Answer(name, rdtype, status=TEMPFAIL, error="timeout"))
        return answers

    def _stub(self, timeout):
        stub = dns.asyncresolver.Resolver(configure=False)
        stub.nameservers = [dns.nameserver.Do53Nameserver(ip, port)
                            for ip, port in self.nameservers]
        stub.lifetime = timeout
        stub.timeout = timeout / self.tries
        stub.use_edns(0, 0, EDNS_PAYLOAD)
        stub.cache = None
        return stub

    async def _one(self, stub, name, rdtype):
        if not name:
            return Answer(name, rdtype, status=NXDOMAIN, error="empty name")
        try:
            qname = dns.name.from_text(name)
        except Exception as exc:
            return Answer(name, rdtype, status=NXDOMAIN, error=f"invalid name: {exc}")
        try:
            answer = await stub.resolve(qname, rdtype, search=False,
                                        raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return Answer(name, rdtype, status=NXDOMAIN)
        except dns.resolver.NoAnswer:
            return Answer(name, rdtype, status=NODATA)
        except dns.exception.Timeout:
            return Answer(name, rdtype, status=TEMPFAIL, error="timeout")
        except dns.resolver.NoNameservers as exc:
            return Answer(name, rdtype, status=TEMPFAIL, error=_server_error(exc))
        except dns.resolver.YXDOMAIN:
            return Answer(name, rdtype, status=NXDOMAIN, error="YXDOMAIN")
        except dns.exception.DNSException as exc:
            return Answer(name, rdtype, status=TEMPFAIL, error=type(exc).__name__)
        except OSError as exc:
            return Answer(name, rdtype, status=TEMPFAIL, error=str(exc))
        except Exception as exc:
            self._log_error(f"DNS lookup of {name} {rdtype} failed: {exc!r}")
            return Answer(name, rdtype, status=TEMPFAIL, error="resolver error")
        records = [record_text(rdata) for rdata in _sorted(answer.rrset)] \
            if answer.rrset is not None else []
        return Answer(name, rdtype, records)

    def _log_error(self, message):
        if self._log is not None:
            self._log(LOGERROR, message)


class PendingLookups:
    """Lookups under way (``Resolver.start``); ``wait()`` returns the answers.

    Answers already in ``cache`` are used as they are; the others are asked
    at once, together. ``wait()`` blocks at most until the batch's timeout
    has passed since ``start``, stores the answers in the cache, and returns
    them in the order asked (the same list on later calls).
    """

    def __init__(self, resolver, queries, cache, timeout, background):
        self.queries = [(_normal_name(name), _normal_type(rdtype))
                        for name, rdtype in queries]
        self.timeout = timeout
        self.started = time.monotonic()
        self._cache = cache
        self._answers = None
        self._fresh = {}
        known = {}
        if cache is not None:
            for key in self.queries:
                if key in cache:
                    known[key] = cache[key]
        self._known = known
        self._missing = list(dict.fromkeys(k for k in self.queries if k not in known))
        self._thread = None
        if not self._missing:
            return
        if background:
            self._thread = threading.Thread(target=self._run, args=(resolver,),
                                            name="dns-lookups", daemon=True)
            self._thread.start()
        else:
            self._run(resolver)

    def _run(self, resolver):
        answers = resolver._run_batch(self._missing, self.timeout)
        self._fresh = dict(zip(self._missing, answers))

    def wait(self):
        if self._answers is not None:
            return self._answers
        if self._thread is not None:
            left = self.started + self.timeout + 2 * _GRACE - time.monotonic()
            self._thread.join(max(0.0, left))
        fresh = dict(self._fresh)
        for key in self._missing:
            if key not in fresh:   # the thread has not finished in time
                fresh[key] = Answer(*key, status=TEMPFAIL, error="timeout")
        if self._cache is not None:
            for key, answer in fresh.items():
                if len(self._cache) < CACHE_LIMIT:
                    self._cache[key] = answer
        found = {**self._known, **fresh}
        self._answers = [found[key] for key in self.queries]
        return self._answers


# -- helpers ---------------------------------------------------------------------

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
    address = ip if isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address)) \
        else ip_address(ip)
    if address is None:
        raise ValueError(f"not an IP address: {ip!r}")
    return dns.reversename.from_address(str(address)).to_text(omit_final_dot=True)


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


def system_nameservers():
    """``(ip, 53)`` for each nameserver of /etc/resolv.conf (may be empty)."""
    try:
        system = dns.resolver.Resolver()
    except Exception:
        return []
    servers = []
    for server in system.nameservers:
        parsed = parse_nameserver(str(server))
        if parsed is not None:
            servers.append(parsed)
    return servers


def _server_error(exc):
    """``SERVFAIL``/``REFUSED``/... from dnspython's NoNameservers."""
    reasons = []
    for error in exc.kwargs.get("errors") or ():
        reason = error[3] if len(error) > 3 else None
        text = reason if isinstance(reason, str) else type(reason).__name__
        if text not in reasons:
            reasons.append(text)
    return ", ".join(reasons) or "no name server answered"


def _sorted(rrset):
    if rrset.rdtype == dns.rdatatype.MX:
        return sorted(rrset, key=lambda rdata: rdata.preference)
    return list(rrset)


def _name_text(name):
    if name == dns.name.root:
        return "."
    return name.to_text(omit_final_dot=True)


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
