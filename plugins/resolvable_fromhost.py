"""resolvable_fromhost - the envelope sender's domain must be able to get mail.

At MAIL FROM the sender's domain must have an MX whose host has an address
outside the networks of ``config/invalid_resolvable_fromhost``, or (with no
MX at all) an A/AAAA address outside them. The MX hosts are looked up all at
once. The outcome is kept in the transaction notes ``resolvable_fromhost``
(``mx``, ``a``, ``ip``, ``null``, or the reason of a failure) and
``resolvable_fromhost_host`` (the domain).

  sender                                    note / karma          reply
  <> (bounces)                              null                  -
  user@[192.0.2.1] (address literal)        ip, -1                -
  MX host with a valid address              mx                    -
  no MX, but a valid A/AAAA address         a, -1 (no MX)         -
  no MX and no valid A/AAAA address         <reason>, -1 -1       FQDN required
  (or the domain does not exist)
  MX hosts all without valid address        invalid MX for <d>,   FQDN required
  or a null MX (``0 .``, RFC 7505)          -1 -1
  no sender domain                          unparsable host, -1 -1  FQDN required
  DNS timeout or SERVFAIL                   <d> MX: timeout ...   Temporary failure

Replies (with ``reject 1``):

  450 FQDN required in the envelope sender (#4.1.8)        reject_type soft (default)
  550 FQDN required in the envelope sender (#5.1.8)        reject_type perm
  450 Temporary address resolution failure (#4.4.3)        always 4xx: our DNS could not tell

``config/invalid_resolvable_fromhost``: networks (``net/bits``, IPv4 or
IPv6) an address may not be in; a line with an address and no ``/bits``
is that address. Without the file (or with an empty one) these are used:
0.0.0.0/8, 10.0.0.0/8, 127.0.0.0/8, 169.254.0.0/16, 172.16.0.0/12,
192.168.0.0/16, 224.0.0.0/4, 240.0.0.0/4, ::/128, ::1/128, fc00::/7,
fe80::/10, ff00::/8.

Skipped: relay clients, whitelisted hosts and senders (``is_immune``).

Arguments:

  reject 1|0|naughty   1 (default) refuse; 0 only log (``fail, tolerated,
                       <reason>``); naughty defers the refusal to the
                       ``naughty`` plugin (temporary failures are then only
                       logged)
  reject_type soft|perm|...   default soft (450), see above
  timeout N            seconds per DNS step (MX, then addresses): default
                       the site's config/dns_timeout (5)

Log lines (LOGINFO): ``pass, <d> has MX at <host>``, ``pass, found A for
<d>``, ``pass, null sender``, ``skip, [ip] is an IP``, ``<d> has no MX``,
``fail, <reason>``, ``karma -1 (<total>)``.

Differences from qpsmtpd 1.0, on purpose: ``reject naughty`` defers the
refusal (the original refused at once, as for ``reject 1``); a domain that
does not exist is answered "FQDN required" (the original said "Temporary
address resolution failure" for it, and used that text for real DNS
failures with a 5xx code under ``reject_type perm``); a DNS failure always
gets a 4xx; every MX host and every address is considered (the original
looked only at the first address of a host); IPv6 networks may be listed;
a null MX is refused; the timeout is the site's (the original used 30 s).

Example ``config/plugins`` line::

  resolvable_fromhost reject 0
"""

import ipaddress

from qpsmtpd.constants import DECLINED, DENYSOFT, LOGINFO, LOGWARN
from qpsmtpd.dns import ip_address
from qpsmtpd.plugin import Plugin, reject_type_code

DEFAULT_INVALID = (
    "0.0.0.0/8", "10.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.168.0.0/16", "224.0.0.0/4", "240.0.0.0/4",
    "::/128", "::1/128", "fc00::/7", "fe80::/10", "ff00::/8")
FQDN_REQUIRED = "FQDN required in the envelope sender"
TEMPORARY = "Temporary address resolution failure (#4.4.3)"


class ResolvableFromhost(Plugin):
    def register(self, *args):
        self.args = self.parse_args(args, {"reject": "1", "reject_type": "soft"})
        if self.args.get("timeout"):
            self.dns_timeout = float(self.args["timeout"])
        self._networks = ((), ())

    def hook_mail(self, session, sender, params):
        if self.is_immune(session):
            return DECLINED
        notes = session.transaction.notes
        if sender is None or sender.is_null():
            notes["resolvable_fromhost"] = "null"
            self.log_pass("null sender")
            return DECLINED
        host = sender.host or ""
        if not host:
            self.adjust_karma(session, -1)
            return self.refuse(session, "unparsable host")
        notes["resolvable_fromhost_host"] = host
        if host.startswith("["):
            notes["resolvable_fromhost"] = "ip"
            self.log_skip(f"{host} is an IP")
            self.adjust_karma(session, -1)
            return DECLINED
        result = self.check_dns(session, host.rstrip(".").lower())
        if result in ("mx", "a"):
            notes["resolvable_fromhost"] = result
            return DECLINED
        if isinstance(result, TemporaryFailure):
            notes["resolvable_fromhost"] = str(result)
            return self.temporary(session, str(result))
        return self.refuse(session, result)

    # -- the DNS checks ---------------------------------------------------------

    def check_dns(self, session, host):
        """``'mx'``, ``'a'``, a reason text, or a ``TemporaryFailure``."""
        # the addresses are asked with the MX so that a dead server costs one timeout
        exchanges, *answers = self.resolve_many(
            session, [(host, "MX"), (host, "A"), (host, "AAAA")])
        if exchanges.temporary:
            return TemporaryFailure(f"{host} MX: {exchanges.reason}")
        if exchanges:
            return self.check_mx(session, host, exchanges)
        self.log(LOGINFO, f"{host} has no MX")
        self.adjust_karma(session, -1)
        if exchanges.status == "NXDOMAIN":
            return f"{host} does not exist"
        addresses = [address for answer in answers for address in answer]
        if any(self.is_valid_address(address) for address in addresses):
            self.log_pass(f"found A for {host}")
            return "a"
        if addresses:
            return f"no valid address for {host}"
        temporary = [answer for answer in answers if answer.temporary]
        if temporary:
            return TemporaryFailure(f"{host}: {temporary[0].reason}")
        return f"no MX or address for {host}"

    def check_mx(self, session, host, exchanges):
        names = [name for name in exchanges if name != "."]
        literal = [name for name in names if ip_address(name) is not None]
        for name in literal:
            if self.is_valid_address(name):
                self.log_pass(f"{host} has MX at {name}")
                return "mx"
        others = [name for name in names if name not in literal]
        answers = self.resolve_many(session, [(name, rdtype) for name in others
                                              for rdtype in ("A", "AAAA")])
        for index, name in enumerate(others):
            found = answers[2 * index] + answers[2 * index + 1]
            if any(self.is_valid_address(address) for address in found):
                self.log_pass(f"{host} has MX at {name}")
                return "mx"
        if not any(answers) and any(answer.temporary for answer in answers):
            return TemporaryFailure(f"MX hosts of {host}: "
                                    f"{next(a.reason for a in answers if a.temporary)}")
        self.adjust_karma(session, -1)
        return f"invalid MX for {host}"

    def is_valid_address(self, text):
        address = ip_address(text)
        if address is None:
            return False
        return not any(address in network for network in self.invalid_networks())

    def invalid_networks(self):
        lines = tuple(self.config_list("invalid_resolvable_fromhost"))
        cached_lines, networks = self._networks
        if lines == cached_lines and networks:
            return networks
        parsed = []
        for line in lines or DEFAULT_INVALID:
            entry = line.split()[0] if line.split() else ""
            try:
                parsed.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.log(LOGWARN, f"ignoring invalid entry in "
                                  f"invalid_resolvable_fromhost: {entry}")
        if not parsed:
            parsed = [ipaddress.ip_network(net) for net in DEFAULT_INVALID]
        self._networks = (lines, tuple(parsed))
        return self._networks[1]

    # -- replies -------------------------------------------------------------------

    def refuse(self, session, reason):
        session.transaction.notes["resolvable_fromhost"] = reason
        self.adjust_karma(session, -1)
        code = reject_type_code(self.args.get("reject_type"), DENYSOFT)
        klass = "4" if code.is_temporary else "5"
        return self.get_reject(session, f"{FQDN_REQUIRED} (#{klass}.1.8)", reason)

    def temporary(self, session, reason):
        reject = str(self.args.get("reject")).lower()
        if reject in ("0", ""):
            self.log(LOGINFO, f"fail, tolerated, {reason}")
            return DECLINED
        if reject == "naughty":
            self.log_skip(f"{reason} (temporary, not deferred)")
            return DECLINED
        self.log_fail(reason)
        return DENYSOFT, TEMPORARY


class TemporaryFailure(str):
    """A reason that means "DNS could not tell", not "does not resolve"."""
