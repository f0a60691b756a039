"""hosts_allow - per-IP connection limit and static allow/deny before the greeting.

Runs in the forkserver parent (hook ``pre-connection``) for every accepted
socket, before a worker is forked. It does nothing under tcpserver/inetd
(use tcpserver's rules file there).

1. Connections per IP. The limit is the forkserver's ``-m/--max-from-ip``
   (0: no limit). When the ``karma`` plugin (listed before this one) has
   set the connection note ``karma_history``, a client with history > 5
   may open 3 more; one with history <= 0 only 1. Counting this
   connection, a client above its limit gets
   ``451 too many connections from <ip>, try again later``. The
   forkserver itself already refuses clients over ``-m`` with a 421
   before any plugin runs, so in practice this check only bites when
   karma lowers a client's limit.
2. ``config/hosts_allow``: lines ``ip[/bits] CONSTANT [message]``, IPv4 or
   IPv6; the first line whose network holds the client decides. CONSTANT
   is a return-code name: ``DENY`` / ``DENY_DISCONNECT`` answer
   ``550 <message>``, ``DENYSOFT`` / ``DENYSOFT_DISCONNECT`` answer
   ``451 <message>``, ``OK`` or ``DECLINED`` let the client in (and stop
   the search, so an earlier line can exempt a host from a later
   network); an unknown name counts as ``DECLINED``. Example::

     192.0.2.4       DECLINED
     192.0.2.0/24    DENY Sorry, known spam only source
     2001:db8::/32   DENYSOFT Try again tomorrow

Fixed or improved on purpose: addresses are compared as normalised IP
strings, so the limit works for IPv6 clients and for IPv4 clients on an
IPv6 listener (the original compared packed IPv4 addresses and never
counted either); the file accepts IPv6 networks; a network written with
host bits set (``192.0.2.7/24``) means its network (the original never
matched such lines).

No arguments. Log lines (LOGINFO): ``fail, too many connections from <ip>
(<n> > <limit>)``, ``fail, <message>`` for a denying line.

Example ``config/plugins`` line (first, or after ``karma``)::

  hosts_allow
"""

import ipaddress

from qpsmtpd.constants import DECLINED, DENYSOFT, LOGDEBUG, LOGWARN, Code, return_code
from qpsmtpd.plugin import Plugin


class HostsAllow(Plugin):
    def hook_pre_connection(self, session, info):
        remote_ip = Plugin.normal_ip(info.get("remote_ip"))
        limit = _int(info.get("max_conn_ip"))
        if limit:
            limit = self.karma_limit(session, limit)
            count = 1 + sum(1 for ip in info.get("child_addrs") or ()
                            if ip and Plugin.normal_ip(ip) == remote_ip)
            if count > limit:
                message = f"too many connections from {remote_ip}"
                self.log_fail(f"{message} ({count} > {limit})")
                return DENYSOFT, f"{message}, try again later"
        return self.check_hosts_allow(remote_ip)

    def karma_limit(self, session, limit):
        history = session.connection.notes.get("karma_history")
        if history is None:
            return limit
        try:
            history = float(history)
        except (TypeError, ValueError):
            return limit
        if history > 5:
            return limit + 3
        if history <= 0:
            return 1
        return limit

    def check_hosts_allow(self, remote_ip):
        address = Plugin.ip_address(remote_ip)
        for entry, network, constant, message in self.parsed_config(
                "hosts_allow", self.parse_hosts_allow):
            if address is None or address.version != network.version \
                    or address not in network:
                continue
            code = return_code(constant) or DECLINED
            if Code(code).is_deny:
                self.log_fail(message or f"{entry} {constant}")
            else:
                self.log(LOGDEBUG, f"pass, {Code(code).name}, {entry}")
            return (code, message) if message else code
        self.log(LOGDEBUG, "pass")
        return DECLINED

    def parse_hosts_allow(self, lines):
        """``[(entry, network, constant, message)]``: parsed once per change
        of the file, not per connection (this runs in the daemon's parent,
        for every client it accepts)."""
        rules = []
        for line in lines:
            words = line.split(None, 2)
            if len(words) < 2:
                continue
            entry, constant = words[0], words[1]
            message = words[2].strip() if len(words) > 2 else ""
            try:
                network = ipaddress.ip_network(entry, strict=False)
            except ValueError:
                self.log(LOGWARN, f"ignoring invalid network in hosts_allow: {entry}")
                continue
            rules.append((entry, network, constant, message))
        return tuple(rules)






def _int(value):
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0
