"""helo - check the name the client gives in HELO/EHLO.

The tests run in this order; the first that fails decides (karma -1, then
the ``reject`` setting), and a name that passes them all is logged
``pass``. ``policy`` chooses how many run:

lenient (default)
  is_in_badhelo      the name is listed in ``config/badhelo``:
                     ``I do not believe you are <name>.``, or for a
                     pattern ``Your HELO hostname is not allowed``
  invalid_localhost  ``localhost`` from an address that is not loopback:
                     ``You are not localhost``
  is_forged_literal  an address literal (``[192.0.2.10]``,
                     ``[IPv6:2001:db8::1]``) that is not the client's
                     address: ``Forged IPs not accepted here``
  is_plain_ip        an address without brackets:
                     ``Plain IP is invalid HELO hostname (RFC 2821)``
rfc (adds)
  is_not_fqdn        no dot: ``HELO name is not fully qualified. Read RFC
                     2821``; characters other than letters, digits, ``-``
                     and ``.``: ``HELO name contains invalid FQDN
                     characters. Read RFC 1035`` (address literals skip it)
  no_forward_dns     the name has no A/AAAA record: ``HELO hostname does
                     not exist`` (NXDOMAIN) or ``HELO hostname did not
                     resolve`` (no address records)
  no_reverse_dns     the client's address has no PTR: ``no rDNS for
                     <ip>`` (NXDOMAIN) or ``no reverse DNS for <ip>``
strict (adds)
  is_address_literal any address literal: ``RFC 2821 allows an address
                     literal, but we do not``
  no_matching_dns    neither does the name resolve to the client's
                     address nor does the address's PTR name the HELO name:
                     ``That HELO hostname fails FCrDNS``. Loose matches
                     count: an address in the same /24 (IPv6: /96), a PTR
                     name in the same domain (last two labels). Both
                     matching gives karma +1.

The DNS tests set the connection notes ``helo_forward_match`` and
``helo_reverse_match`` (reset at every HELO/EHLO). A DNS lookup that times
out or gets SERVFAIL: no_forward_dns passes (as in qpsmtpd);
no_reverse_dns answers ``450 error getting reverse DNS for <ip>`` and
closes the connection, unless ``reject`` is 0 (tolerated) or naughty (only
logged: a temporary failure must not become a permanent deferred
rejection). No karma is taken for either.

``config/badhelo``: one name per line, compared without regard to case.
An entry holding any of ``{}[]()^$|*+?\\!`` is a regular expression
searched in the lower-cased name; a leading ``!`` negates it (the name is
refused when the pattern does *not* match). ``aol.com`` and ``yahoo.com``
are classics: their real servers never say so.

Every message gets ``X-HELO: <name>`` at the top of its header (an older
X-HELO is removed).

Skipped: relay clients and whitelisted hosts (``is_immune``).

Arguments:

  policy lenient|rfc|strict   default lenient
  reject 1|0|naughty          1 (default) refuse, 0 only log, naughty
                              defer to the ``naughty`` plugin
  reject_type                 always disconnect (as in qpsmtpd): a refused
                              HELO gets ``550 <message>`` (after EHLO
                              ``550 5.7.1``) and the connection is closed
  timeout N                   seconds for the DNS lookups (default: the
                              site's config/dns_timeout, 5)

Log lines (LOGINFO): ``pass``, ``fail, <test detail>`` (``fail,
tolerated, ...``, ``fail, NAUGHTY, ...``), ``skip, ...``, ``karma ...``.

Differences from qpsmtpd 1.0, on purpose: is_forged_literal checks address
literals as its manual says (the original fired for plain IPs and never
for ``[ip]``, so plain IPs got ``Forged IPs not accepted here``; they now
get is_plain_ip's message), and handles IPv6 literals; every badhelo
entry is tried (the original stopped at the first pattern); forward DNS
asks for A and AAAA; a timeout or SERVFAIL of the reverse lookup is a
temporary refusal (450), not a permanent one (550).

Example ``config/plugins`` line::

  helo policy strict reject 0
"""

import re

from qpsmtpd.constants import DECLINED, DENYSOFT_DISCONNECT, LOGDEBUG, LOGERROR, LOGINFO
from qpsmtpd.dns import ip_address, ptr_name, same_network
from qpsmtpd.plugin import Plugin, PluginError

LENIENT = ("is_in_badhelo", "invalid_localhost", "is_forged_literal", "is_plain_ip")
RFC = LENIENT + ("is_not_fqdn", "no_forward_dns", "no_reverse_dns")
STRICT = RFC + ("is_address_literal", "no_matching_dns")
POLICIES = {"lenient": LENIENT, "rfc": RFC, "strict": STRICT}

_PATTERN_CHARS = re.compile(r"[{}\[\]()^$|*+?\\!]")
_FQDN_CHARS = re.compile(r"[A-Za-z0-9.\-]+\Z")


class Temporary(str):
    """A test's message for a failure that is not the client's fault (DNS)."""


class Helo(Plugin):
    def register(self, *args):
        self.args = self.parse_args(args, {"policy": "lenient", "reject": "1"})
        self.args["reject_type"] = "disconnect"
        policy = self.args["policy"].lower()
        if policy not in POLICIES:
            raise PluginError(f"helo: unknown policy {self.args['policy']!r} "
                              "(lenient, rfc or strict)")
        self.tests = POLICIES[policy]
        if self.args.get("timeout"):
            self.dns_timeout = float(self.args["timeout"])

    # -- HELO / EHLO ---------------------------------------------------------

    def hook_helo(self, session, host, *extra):
        notes = session.connection.notes
        notes.pop("helo_forward_match", None)
        notes.pop("helo_reverse_match", None)
        if not host:
            self.log(LOGINFO, "fail, tolerated, no helo host")
            self.adjust_karma(session, -2)
            return DECLINED
        if self.is_immune(session):
            return DECLINED
        for test in self.tests:
            failure = getattr(self, test)(session, host)
            if failure is None:
                continue
            message, detail = failure
            if isinstance(message, Temporary):
                return self.temporary_reject(session, message, detail)
            self.adjust_karma(session, -1)
            return self.get_reject(session, message, detail)
        self.log_pass()
        return DECLINED

    hook_ehlo = hook_helo

    def temporary_reject(self, session, message, detail):
        reject = str(self.args.get("reject")).lower()
        if reject in ("0", ""):
            self.log(LOGINFO, f"fail, tolerated, {detail}")
            return None
        if reject == "naughty":
            self.log_skip(f"{detail} (temporary, not deferred)")
            return None
        self.log_fail(detail)
        return DENYSOFT_DISCONNECT, str(message)

    # -- the message ----------------------------------------------------------

    def hook_data_post(self, session):
        header = session.transaction.header
        hello_host = session.connection.hello_host
        if header is None or not hello_host:
            return DECLINED
        header.delete("X-HELO")
        header.add("X-HELO", hello_host, 0)
        return DECLINED

    # -- the tests: each returns None or (message, log detail) -------------------

    def is_in_badhelo(self, session, host):
        name = host.lower()
        for entry in self.config_list("badhelo"):
            entry = entry.strip()
            if not entry:
                continue
            if _PATTERN_CHARS.search(entry):
                negate = entry.startswith("!")
                pattern = entry[1:] if negate else entry
                try:
                    found = re.search(pattern, name, re.IGNORECASE) is not None
                except re.error as exc:
                    self.log(LOGERROR, f"badhelo: bad pattern {entry}: {exc}")
                    continue
                if found != negate:
                    return ("Your HELO hostname is not allowed",
                            f"badhelo pattern match ({entry})")
            elif name == entry.lower():
                return f"I do not believe you are {host}.", "in badhelo"
        return None

    def invalid_localhost(self, session, host):
        if self.is_localhost(session.connection.remote_ip):
            return None
        if host.lower() != "localhost":
            return None
        return "You are not localhost", "invalid localhost"

    def is_forged_literal(self, session, host):
        literal = address_literal(host)
        if literal is None:
            return None
        if literal == ip_address(session.connection.remote_ip):
            return None
        return "Forged IPs not accepted here", "forged IP literal"

    def is_plain_ip(self, session, host):
        if host.startswith("[") or not self.is_valid_ip(host):
            return None
        return "Plain IP is invalid HELO hostname (RFC 2821)", "plain IP"

    def is_not_fqdn(self, session, host):
        if host.startswith("[") and host.endswith("]"):
            return None
        if "." not in host:
            return "HELO name is not fully qualified. Read RFC 2821", "not FQDN"
        if not _FQDN_CHARS.match(host):
            return ("HELO name contains invalid FQDN characters. Read RFC 1035",
                    "invalid FQDN chars")
        return None

    def no_forward_dns(self, session, host):
        if host.startswith("["):
            return None
        queries = [(host, "A"), (host, "AAAA")]
        client = ip_address(session.connection.remote_ip)
        if "no_reverse_dns" in self.tests and client is not None:
            # asked now, with the others, so a dead server costs one timeout
            queries.append((ptr_name(client), "PTR"))
        answers = self.resolve_many(session, queries)[:2]
        addresses = [address for answer in answers for address in answer]
        if addresses:
            remote_ip = session.connection.remote_ip
            if any(same_network(address, remote_ip) for address in addresses):
                self.log(LOGDEBUG, "forward ip match")
                session.connection.notes["helo_forward_match"] = 1
            return None
        if any(answer.temporary for answer in answers):
            reason = next(a.reason for a in answers if a.temporary)
            self.log(LOGERROR, f"skip, query failed ({reason})")
            return None
        if all(answer.status == "NXDOMAIN" for answer in answers):
            return "HELO hostname does not exist", "no such host"
        return "HELO hostname did not resolve", "no forward DNS"

    def no_reverse_dns(self, session, host):
        ip = session.connection.remote_ip
        if ip_address(ip) is None:
            return None
        names = self.resolve_ptr(session, ip)
        if names.temporary:
            return (Temporary(f"error getting reverse DNS for {ip}"),
                    f"rDNS {names.reason}")
        if names.status == "NXDOMAIN":
            return f"no rDNS for {ip}", "no rDNS"
        if not names:
            return f"no reverse DNS for {ip}", "no rDNS"
        for name in names:
            self.log(LOGDEBUG, f"PTR: {name}")
            if names_match(name.lower(), host.lower()):
                session.connection.notes["helo_reverse_match"] = 1
        return None

    def is_address_literal(self, session, host):
        if address_literal(host) is None:
            return None
        return "RFC 2821 allows an address literal, but we do not", "bracketed IP"

    def no_matching_dns(self, session, host):
        notes = session.connection.notes
        forward, reverse = notes.get("helo_forward_match"), notes.get("helo_reverse_match")
        if forward and reverse:
            self.log(LOGDEBUG, "forward and reverse match")
            self.adjust_karma(session, 1)
            return None
        if forward or reverse:
            return None
        return "That HELO hostname fails FCrDNS", "no matching DNS"


def address_literal(host):
    """The address in ``[192.0.2.1]`` or ``[IPv6:2001:db8::1]``, else None."""
    if not (host.startswith("[") and host.endswith("]")):
        return None
    return ip_address(host)


def names_match(dns_name, helo_name):
    """The same name, or the same last two labels (``mx1.example.com`` and
    ``mx2.example.com``); a PTR name with fewer than two labels never matches."""
    dns_labels = dns_name.rstrip(".").split(".")
    if len(dns_labels) < 2:
        return False
    if dns_name == helo_name:
        return True
    return dns_labels[-2:] == helo_name.rstrip(".").split(".")[-2:]
