"""fcrdns - forward-confirmed reverse DNS of the client (the ``iprev`` check).

At connect the plugin looks up the client address's PTR names, then the
A and AAAA records of those names (all at once), and records the outcome
as karma and as an ``iprev`` part of the Authentication-Results header
every message of the connection gets (RFC 8601)::

  Authentication-Results: mx.example.org; auth=none; iprev=pass policy.iprev=192.0.2.10

It never refuses anything: other plugins (karma, naughty) act on the
score.

  outcome                                  iprev       karma  log (LOGINFO)
  client on loopback                       -           +1     pass, is localhost
  remote host says localhost, is not       -           -1     fail, not localhost
  PTR lookup timed out / SERVFAIL          temperror          fail, error getting rDNS: <why>
  no PTR (NXDOMAIN)                        permerror   -1     fail, no rDNS: NXDOMAIN
  no PTR records (NOERROR, empty)          permerror   -1     fail, no PTR records
  PTR name without a dot                   fail        -1     fail, not FQDN
  PTR name with other characters           fail        -1     fail, invalid FQDN chars
  a PTR name has the client's address      pass        +1     pass
  ... an address in the same /24 (/96)     pass               pass, forward network match
  PTR names resolve, none to the client    fail               fail, no PTR name resolves to <ip>
  forward lookups timed out / SERVFAIL     temperror          fail, error getting forward DNS: <why>
  PTR names have no A/AAAA records         fail        -1     fail, no PTR hosts have forward DNS

At most 10 PTR names are checked. Skipped: relay clients and whitelisted
hosts (``is_immune``).

Arguments:

  timeout N      seconds for each step (the PTR lookup, then the forward
                 lookups): default the site's config/dns_timeout (5)
  reject, reject_type  accepted and ignored (qpsmtpd documents them but
                 never rejects either)

Differences from qpsmtpd 1.0, on purpose: exactly one ``iprev`` part per
connection, with RFC 8601's ``policy.iprev`` property (the original could
store several, e.g. ``iprev=permerror`` then ``iprev=pass``, and gave no
address); the PTR names come from the plugin's own lookup (shared with the
daemon's through the connection's DNS cache), not from ``remote_host``, so
they are checked the same under tcpserver with ``-H``; a loopback client
is not then failed for its name ``localhost``; AAAA records and IPv6
clients take part; temporary DNS failures give ``temperror`` and no karma.

Example ``config/plugins`` line::

  fcrdns
"""

import re

from qpsmtpd.constants import DECLINED
from qpsmtpd.dns import ip_address, same_network
from qpsmtpd.plugin import Plugin

MAX_NAMES = 10
_FQDN_CHARS = re.compile(r"[A-Za-z0-9.\-]+\Z")


class Fcrdns(Plugin):
    def register(self, *args):
        self.args = self.parse_args(args, {"reject": "0"})
        self.args["reject_type"] = "temp"
        if self.args.get("timeout"):
            self.dns_timeout = float(self.args["timeout"])

    def hook_connect(self, session):
        if self.is_immune(session):
            return DECLINED
        connection = session.connection
        ip = connection.remote_ip
        if self.is_localhost(ip):
            self.adjust_karma(session, 1)
            self.log_pass("is localhost")
            return DECLINED
        if (connection.remote_host or "").lower() == "localhost":
            self.adjust_karma(session, -1)
            self.log_fail("not localhost")
            return DECLINED
        names = self.reverse_names(session, ip)
        if names:
            self.forward_confirm(session, ip, names)
        return DECLINED

    def reverse_names(self, session, ip):
        """The client's usable PTR names; records the outcome when there are none."""
        answer = self.resolve_ptr(session, ip)
        if answer.temporary:
            return self.outcome(session, ip, "temperror", 0,
                                f"fail, error getting rDNS: {answer.reason}")
        if answer.status == "NXDOMAIN":
            return self.outcome(session, ip, "permerror", -1, "fail, no rDNS: NXDOMAIN")
        if not answer:
            return self.outcome(session, ip, "permerror", -1, "fail, no PTR records")
        names = [name for name in answer[:MAX_NAMES] if is_host_name(name)]
        if not names:
            problem = "not FQDN" if "." not in answer[0] else "invalid FQDN chars"
            return self.outcome(session, ip, "fail", -1, f"fail, {problem}")
        return names

    def forward_confirm(self, session, ip, names):
        queries = [(name, rdtype) for name in names for rdtype in ("A", "AAAA")]
        answers = self.resolve_many(session, queries)
        addresses = [address for answer in answers for address in answer]
        client = ip_address(ip)
        if any(ip_address(address) == client for address in addresses):
            return self.outcome(session, ip, "pass", 1, "pass")
        if any(same_network(address, ip) for address in addresses):
            return self.outcome(session, ip, "pass", 0, "pass, forward network match")
        if addresses:
            return self.outcome(session, ip, "fail", 0,
                                f"fail, no PTR name resolves to {ip}")
        failed = [answer for answer in answers if answer.temporary]
        if failed:
            return self.outcome(session, ip, "temperror", 0,
                                f"fail, error getting forward DNS: {failed[0].reason}")
        return self.outcome(session, ip, "fail", -1, "fail, no PTR hosts have forward DNS")

    def outcome(self, session, ip, iprev, karma, summary):
        """Record one result: A-R part, karma, the summary log line."""
        if karma:
            self.adjust_karma(session, karma)
        verdict, _, detail = summary.partition(", ")
        (self.log_pass if verdict == "pass" else self.log_fail)(detail)
        self.store_auth_results(session, f"iprev={iprev} policy.iprev={ip}")
        return None


def is_host_name(name):
    return "." in name and _FQDN_CHARS.match(name) is not None
