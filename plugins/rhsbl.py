"""rhsbl - refuse senders whose domain or HELO name is on a DNS blocklist.

At MAIL FROM the plugin asks every list of ``config/rhsbl_zones`` about the
sender's domain and, when it differs, the HELO name - all lookups at once.
A listing refuses the sender::

  550 Mail from example.com rejected because it <text>
  550 Mail from HELO mx.example.com rejected because it <text>

(``550 5.7.1 ...`` after EHLO). The sender's domain is checked before the
HELO name, lists in file order; the first listing gives the reply.

``config/rhsbl_zones``: one list per line. ``zone`` asks for a TXT record,
whose text completes the reply; ``zone message`` asks for an A record and
completes the reply with ``message``::

  dsn.example-rhsbl.org
  abuse.example-rhsbl.org does not support abuse@domain

An A answer counts only in 127.0.0.0/8, and not the 127.255.255.x codes
lists use for "refused"/"error".

Skipped: the null sender ``<>``, address literals (``user@[192.0.2.1]``,
``HELO [192.0.2.1]``), relay clients and whitelisted hosts and senders
(``is_immune``). A list that does not answer in time or answers SERVFAIL
counts as not listing (LOGERROR ``<name> query failed: timeout``).

Arguments:

  reject 1|0|naughty   1 (default) refuse, 0 only log, naughty defer to
                       the ``naughty`` plugin
  reject_type perm|temp|disconnect|temp_disconnect   default perm; a
                       single ``disconnect`` is the old spelling
  timeout N            seconds for the lookups (default: the site's
                       config/dns_timeout, 5)

Log lines (LOGINFO): ``pass``, ``fail, <zone>`` (``fail, tolerated, ...``,
``fail, NAUGHTY, ...``), ``skip, ...``.

Differences from qpsmtpd 1.0, on purpose: the messages of
``config/rhsbl_zones`` are used (the original never used them); lookups
for all names and lists run at once; the timeout is the site's.

Example ``config/plugins`` line::

  rhsbl
"""

import ipaddress

from qpsmtpd.constants import DECLINED, LOGDEBUG, LOGERROR, LOGWARN
from qpsmtpd.dns import ip_address
from qpsmtpd.plugin import Plugin

_LISTED = ipaddress.ip_network("127.0.0.0/8")
_LIST_ERRORS = ipaddress.ip_network("127.255.255.0/24")


class Rhsbl(Plugin):
    def register(self, *args):
        reject_type = None
        if len(args) == 1:      # the old spelling: rhsbl disconnect
            reject_type, args = args[0], ()
        self.args = self.parse_args(args, {"reject": "1", "reject_type": "perm"})
        if reject_type is not None:
            self.args["reject_type"] = reject_type
        if self.args.get("timeout"):
            self.dns_timeout = float(self.args["timeout"])

    def hook_mail(self, session, sender, params):
        zones = self.zones()
        if not zones or sender is None or sender.is_null():
            self.log(LOGDEBUG, "skip, no RHS checks necessary")
            return DECLINED
        if self.is_immune(session):
            return DECLINED
        hosts = []
        domain = (sender.host or "").rstrip(".").lower()
        helo = (session.connection.hello_host or "").rstrip(".").lower()
        for label, host in ((f"Mail from {domain}", domain),
                            (f"Mail from HELO {helo}", helo)):
            if host and not host.startswith("[") and ip_address(host) is None \
                    and host not in [h for _, h in hosts]:
                hosts.append((label, host))
        queries = [(f"{host}.{zone}", "A" if message is not None else "TXT")
                   for _, host in hosts for zone, message in zones]
        answers = iter(self.resolve_many(session, queries))
        listing = None
        for label, host in hosts:
            for zone, message in zones:
                answer = next(answers)
                if answer.temporary:
                    self.log(LOGERROR, f"{answer.name} query failed: {answer.reason}")
                    continue
                text = self.listed_text(zone, message, answer)
                if text is not None and listing is None:
                    listing = (f"{label} rejected because it {text}", zone)
        if listing is None:
            self.log_pass()
            return DECLINED
        return self.get_reject(session, *listing)

    def listed_text(self, zone, message, answer):
        if not answer:
            return None
        if message is None:
            return answer[0] or f"is listed in {zone}"
        codes = [a for a in answer if (address := ip_address(a)) is not None
                 and address in _LISTED and address not in _LIST_ERRORS]
        if not codes:
            self.log(LOGWARN, f"{zone} answered {', '.join(answer)}: not a listing")
            return None
        return message

    def zones(self):
        """``[(zone, message or None)]`` from rhsbl_zones, in file order."""
        zones = []
        for line in self.config_list("rhsbl_zones"):
            words = line.split(None, 1)
            if words:
                zone = words[0].strip(".").lower()
                zones.append((zone, words[1].strip() if len(words) > 1 else None))
        return zones
