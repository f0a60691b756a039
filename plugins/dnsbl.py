"""dnsbl - refuse clients whose IP address is on a DNS blocklist.

At connect the plugin asks every list of ``config/dnsbl_zones`` about the
client's address, all lists at once and in the background: the greeting is
not delayed. The answers are read at the first RCPT TO, which waits at
most one DNS timeout (answers that arrived meanwhile are taken at once;
see qpsmtpd/dns.py for the retries of a late RCPT). A listed client then gets, for every
recipient::

  550 <dnsbl_rejectmsg lines, if any>
  550 <the list's TXT text, or the zone's message>

(``550 5.7.1 ...`` after EHLO), and costs the session 1 karma point.
Recipients ``postmaster``, ``abuse``, ``mailer-daemon`` and ``root`` are
always accepted (LOGWARN ``skip, don't blacklist special account:
<user>``), so a listed sender can still reach the people who can delist
it. With ``reject naughty`` the plugin withdraws its deferred rejection
for such a recipient and puts it back for the next other one, so the
``naughty`` plugin lets exactly the special recipients through (at
``naughty reject data``: a message only to special recipients).

Skipped: relay clients and whitelisted hosts (``is_immune``, checked at
connect and again at RCPT, so a client that authenticated or that
``dns_whitelist_soft`` whitelisted is not refused), and addresses in
``config/dnsbl_allow``.

Config files:

  dnsbl_zones      one list per line. ``zone`` asks the list for a TXT
                   record, whose text is the reply. ``zone:message`` asks
                   for an A record and replies ``message``, with ``%IP%``
                   replaced by the client's address:

                     zen.spamhaus.org
                     bl.example.net:Listed by bl.example.net, see https://bl.example.net/?%IP%

                   An A answer counts only in 127.0.0.0/8, and not the
                   127.255.255.x codes lists use for "refused"/"error";
                   other answers are logged and ignored. With several
                   listings, the first zone in the file gives the reply.
  dnsbl_allow      addresses never checked: an IP address
                   (``192.0.2.7``, ``2001:db8::7``), a prefix ending in
                   ``.`` or ``:`` (``172.16.33.``, ``2001:db8:1:``), or a
                   network (``198.51.100.0/24``).
  dnsbl_rejectmsg  lines sent before the list's text, e.g. what to do
                   about a listing.

Environment variable ``RBLSMTPD`` (rblsmtpd's, e.g. from tcpserver rules):
set but empty - no checks for this client; set to a text - the client is
treated as listed with that text (``%IP%`` replaced; a leading ``-``, rblsmtpd's
"permanent" marker, is dropped), no DNS queries.

Arguments:

  reject 1|0|naughty   1 (default) refuse at RCPT; 0 only log
                       (``fail, tolerated``); naughty: the lists are
                       read at connect (the greeting waits for them) and
                       the refusal is left to the ``naughty`` plugin
  reject_type perm|temp|disconnect|temp_disconnect   default perm (550);
                       disconnect closes the connection after the 550.
                       A single word (``dnsbl disconnect``) is the old
                       spelling of reject_type.
  timeout N            seconds the lookups may take (default: the site's
                       config/dns_timeout, 5)

A list that does not answer in time, or answers SERVFAIL, counts as not
listing the client (LOGERROR ``<zone> query failed: timeout``); lookups to
all lists together take one timeout at most.

Log lines (LOGINFO): ``pass``, ``fail, <zone>`` (``fail, tolerated, <zone>``,
``fail, NAUGHTY, <zone>``), ``skip, whitelisted host``, ``skip, relay
client``, ``skip, <ip> in dnsbl_allow``, ``karma -1 (<total>)``.

Differences from qpsmtpd 1.0, on purpose: the ``zone:message`` messages
are used (the original never used them); IPv6 clients are checked (nibble
format, as lists that support IPv6 expect); lists are reported in file
order; the default timeout is the site's (the original waited up to 30 s
per list); ``dnsbl_allow`` prefixes match whole octets/groups and CIDR
works; a special recipient withdraws only this plugin's deferred
rejection, not those of other plugins, and only for itself (the original
cleared the ``naughty`` note for good, so ``RCPT TO:<postmaster>`` opened
the door for the recipients after it).

Example ``config/plugins`` line::

  dnsbl reject naughty reject_type disconnect
"""

import ipaddress
import os

from qpsmtpd.constants import DECLINED, LOGDEBUG, LOGERROR, LOGINFO, LOGWARN
from qpsmtpd.dns import ip_address, reverse_ip
from qpsmtpd.plugin import Plugin

SPECIAL_ACCOUNTS = frozenset(("postmaster", "abuse", "mailer-daemon", "root"))
_LISTED = ipaddress.ip_network("127.0.0.0/8")
_LIST_ERRORS = ipaddress.ip_network("127.255.255.0/24")


class Dnsbl(Plugin):
    def register(self, *args):
        reject_type = None
        if len(args) == 1:      # the old spelling: dnsbl disconnect
            reject_type, args = args[0], ()
        self.args = self.parse_args(args, {"reject": "1", "reject_type": "perm"})
        if reject_type is not None:
            self.args["reject_type"] = reject_type
        if self.args.get("timeout"):
            self.dns_timeout = float(self.args["timeout"])

    # -- connect: start the lookups ------------------------------------------

    def hook_connect(self, session):
        connection = session.connection
        ip = connection.remote_ip
        rblsmtpd = os.environ.get("RBLSMTPD")
        if rblsmtpd is not None:
            if not rblsmtpd:
                self.log(LOGINFO, f"RBLSMTPD set, but empty for {ip}")
                return DECLINED
            self.log(LOGINFO, f'RBLSMTPD="{rblsmtpd}" for {ip}')
            text = rblsmtpd[1:] if rblsmtpd.startswith("-") else rblsmtpd
            connection.notes["dnsbl"] = self.reply_text(text.replace("%IP%", ip))
            connection.notes["dnsbl_zone"] = "RBLSMTPD"
            return self.defer_if_naughty(session)
        if self.is_immune(session):
            return DECLINED
        if self.is_allowed(ip):
            self.log_skip(f"{ip} in dnsbl_allow")
            return DECLINED
        zones = self.zones()
        if not zones:
            self.log(LOGDEBUG, "skip, no list configured")
            return DECLINED
        reversed_ip = reverse_ip(ip)
        if reversed_ip is None:
            self.log_skip(f"not an IP address: {ip!r}")
            return DECLINED
        queries = [(f"{reversed_ip}.{zone}", "A" if message is not None else "TXT")
                   for zone, message in zones]
        for name, rdtype in queries:
            self.log(LOGDEBUG, f"Checking {name} for {rdtype} record in the background")
        connection.notes["dnsbl_lookups"] = (zones, self.resolve_later(session, queries))
        return self.defer_if_naughty(session)

    def defer_if_naughty(self, session):
        """``reject naughty``: decide now, so ``naughty`` can act at any stage."""
        if str(self.args.get("reject")).lower() != "naughty":
            return DECLINED
        message = self.listing(session)
        if message:
            return self.get_reject(session, message,
                                   session.connection.notes.get("dnsbl_zone"))
        return DECLINED

    # -- RCPT: read the answers, refuse -----------------------------------------

    def hook_rcpt(self, session, recipient, params):
        message = self.listing(session)
        if not message:
            return DECLINED
        if self.is_immune(session):
            return DECLINED
        naughty = str(self.args.get("reject")).lower() == "naughty"
        if (recipient.user or "").lower() in SPECIAL_ACCOUNTS:
            self.log(LOGWARN, f"skip, don't blacklist special account: {recipient.user}")
            if naughty:
                self.withdraw_deferred_reject(session)
            return DECLINED
        if naughty:   # deferred at connect; again if a special recipient withdrew it
            self.restore_deferred_reject(session, message)
            return DECLINED
        return self.get_reject(session, message, session.connection.notes.get("dnsbl_zone"))

    # -- the end: a batch never read ---------------------------------------------------

    def hook_post_connection(self, session):
        """A client gone before RCPT: close the lookups' sockets now (a
        reused worker would otherwise keep them until the next collection)."""
        started = session.connection.notes.pop("dnsbl_lookups", None)
        if started is not None:
            started[1].close()
        return DECLINED

    # -- helpers -------------------------------------------------------------------

    def listing(self, session):
        """The reply text when the client is listed, else "" (once per connection)."""
        notes = session.connection.notes
        started = notes.pop("dnsbl_lookups", None)
        if started is None:
            return notes.get("dnsbl") or ""
        zones, pending = started
        ip = session.connection.remote_ip
        listed = None
        for (zone, message), answer in zip(zones, pending.wait()):
            if answer.temporary:
                self.log(LOGERROR, f"{zone} query failed: {answer.reason}")
                continue
            text = self.listed_text(zone, message, answer, ip)
            if text is not None and listed is None:
                listed = (zone, text)
        if listed is None:
            notes["dnsbl"] = ""
            self.log_pass()
            return ""
        zone, text = listed
        notes["dnsbl"] = self.reply_text(text)
        notes["dnsbl_zone"] = zone
        self.log(LOGINFO, f"{ip} listed in {zone}: {text}")
        self.adjust_karma(session, -1)
        return notes["dnsbl"]

    def listed_text(self, zone, message, answer, ip):
        """What a list's answer says: the reply text, or None (not listed)."""
        if not answer:
            return None
        if message is None:
            return answer[0] or f"Blocked by {zone}"
        codes = [a for a in answer if (address := ip_address(a)) is not None
                 and address in _LISTED and address not in _LIST_ERRORS]
        if not codes:
            self.log(LOGWARN, f"{zone} answered {', '.join(answer)}: not a listing")
            return None
        return message.replace("%IP%", ip)

    def reply_text(self, text):
        return "\n".join(self.config_list("dnsbl_rejectmsg") + [text])

    def zones(self):
        """``[(zone, message or None)]`` from dnsbl_zones, in file order."""
        zones = []
        for line in self.config_list("dnsbl_zones"):
            zone, sep, message = line.strip().partition(":")
            zone = zone.strip().strip(".").lower()
            if zone:
                zones.append((zone, message.strip() if sep else None))
        return zones

    def is_allowed(self, ip):
        address = ip_address(ip)
        if address is None:
            return False
        text = str(address)
        networks, prefixes, addresses = self.parsed_config("dnsbl_allow", self.parse_allow)
        if address in addresses or text.startswith(prefixes):
            return True
        return any(address.version == network.version and address in network
                   for network in networks)

    def parse_allow(self, lines):
        """``(networks, prefixes, addresses)`` of dnsbl_allow, parsed once
        per change of the file, not per connection."""
        networks, prefixes, addresses = [], [], set()
        for entry in lines:
            entry = entry.split()[0].lower() if entry.split() else ""
            if not entry:
                continue
            if "/" in entry:
                try:
                    networks.append(ipaddress.ip_network(entry, strict=False))
                except ValueError:
                    self.log(LOGWARN, f"ignoring invalid entry in dnsbl_allow: {entry}")
                continue
            if entry.endswith((".", ":")):
                prefixes.append(entry)
            address = ip_address(entry)
            if address is not None:
                addresses.add(address)
        return tuple(networks), tuple(prefixes), frozenset(addresses)

    def withdraw_deferred_reject(self, session):
        """Take this plugin's message out of the pending ``naughty`` list, so
        the ``naughty`` plugin lets this recipient through."""
        notes = session.connection.notes
        pending = notes.get("naughty")
        if isinstance(pending, list):
            notes["naughty"] = [m for m in pending if not self._is_mine(m)] or None

    def restore_deferred_reject(self, session, message):
        pending = session.connection.notes.get("naughty")
        if not (isinstance(pending, list) and any(self._is_mine(m) for m in pending)):
            self.store_deferred_reject(session, message)

    def _is_mine(self, message):
        return str(message).startswith(f"({self.name}) ")
