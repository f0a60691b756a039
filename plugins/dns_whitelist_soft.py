"""dns_whitelist_soft - exempt clients listed on a DNS allowlist.

At connect the plugin asks every zone of ``config/whitelist_zones`` for a
TXT record of the client's reversed address (``10.2.0.192.<zone>`` for
192.0.2.10; nibbles for IPv6), all zones at once. When one answers, the
connection note ``whitelisthost`` is set to its text, so ``is_immune``
lets the client skip the checks of the plugins listed after this one
(dnsbl, rhsbl, helo, resolvable_fromhost, ...), and a LOGNOTICE line says
``Host <ip> is whitelisted: <text>``. Nothing is ever refused.

List it before the plugins it should exempt. The greeting waits for the
answers, at most one DNS timeout; a zone that does not answer in time or
answers SERVFAIL counts as not listing the client (LOGERROR ``<zone> query
failed: timeout``).

``config/whitelist_zones``: one zone per line (the first word counts)::

  list.dnswl.example

A whitelisted host is not a relay client: it may not send to domains we do
not handle (see rcpt_ok).

No arguments. Log lines: LOGNOTICE ``Host <ip> is whitelisted: <text>``,
LOGINFO ``pass, not whitelisted``, ``skip, ...``.

Difference from qpsmtpd 1.0, on purpose: the note is set at connect (the
original sent the queries at connect and read them at the first RCPT, so
plugins running before that - dnsbl's connect, helo, the MAIL checks -
ignored the allowlist, issue #203); IPv6 clients are looked up.

Example ``config/plugins`` line (before dnsbl and the other checks)::

  dns_whitelist_soft
"""

from qpsmtpd.constants import DECLINED, LOGDEBUG, LOGERROR, LOGNOTICE
from qpsmtpd.dns import reverse_ip
from qpsmtpd.plugin import Plugin


class DnsWhitelistSoft(Plugin):
    def hook_connect(self, session):
        connection = session.connection
        zones = [line.split()[0].strip(".").lower()
                 for line in self.config_list("whitelist_zones") if line.split()]
        if not zones:
            self.log(LOGDEBUG, "skip, no zones")
            return DECLINED
        ip = connection.remote_ip
        reversed_ip = reverse_ip(ip)
        if reversed_ip is None:
            self.log_skip(f"not an IP address: {ip!r}")
            return DECLINED
        answers = self.resolve_many(session, [(f"{reversed_ip}.{zone}", "TXT")
                                              for zone in zones])
        for zone, answer in zip(zones, answers):
            if answer.temporary:
                self.log(LOGERROR, f"{zone} query failed: {answer.reason}")
            elif answer:
                note = answer[0] or f"listed in {zone}"
                connection.notes["whitelisthost"] = note
                self.log(LOGNOTICE, f"Host {ip} is whitelisted: {note}")
                return DECLINED
        self.log_pass("not whitelisted")
        return DECLINED
