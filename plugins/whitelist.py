"""whitelist - static allowlists that exempt hosts, HELO names, senders and
recipients from the plugins listed after this one.

List ``whitelist`` before the plugins it should exempt. Each check that
matches answers OK, which ends that hook: the plugins after this one do not
run for it, and the command succeeds (qpsmtpd's behaviour). Each also leaves
a note that later hooks can read:

  config file        checked at   a match sets the note (on the)
  whitelisthosts     connect      whitelisthost (connection), karma +5
  $WHITELISTCLIENT   connect      whitelistclient (connection), karma +5
  whitelisthelo      HELO/EHLO    whitelisthelo (connection)
  whitelistsenders   MAIL FROM    whitelistsender (transaction)
  whitelistrcpt      RCPT TO      whitelistrcpt (transaction, a count)

``is_immune`` (used by most checking plugins) honours ``whitelisthost`` and
``whitelistsender`` only, so a whitelisted host or sender skips those
checks for the rest of the connection or message. ``whitelistclient``,
``whitelisthelo`` and ``whitelistrcpt`` are only notes (a HELO name is
whatever the client says).

What a match means at each stage:

* connect: the greeting is sent and later connect plugins (dnsbl,
  earlytalker, ...) do not run.
* HELO/EHLO: the greeting is accepted without the later helo plugins.
* MAIL: the sender is accepted without the later mail plugins.
* RCPT: the recipient is accepted at once with ``250`` - rcpt_ok (and any
  other later rcpt plugin) does not run, so a recipient listed in
  ``whitelistrcpt`` is accepted even for a domain we do not handle. List
  only your own addresses and domains there, or you relay for them.

A whitelisted host or sender is immune to the other checks but may not
relay: ``rcpt_ok`` accepts foreign domains only for relay clients (the
original let every immune session relay).

File formats (one entry per line, the first word counts; ``#`` comments
and blank lines are ignored like in every config file):

* ``whitelisthosts``: an IP address (``192.0.2.7``, ``2001:db8::7``), a
  prefix of whole octets or groups (``192.0.2.`` or ``192.0.2``,
  ``2001:db8:1:``), or a network in CIDR notation (``198.51.100.0/24``,
  ``2001:db8::/32``). An IPv4 client seen on an IPv6 socket
  (``::ffff:192.0.2.7``) is matched as IPv4. Entries that are none of these
  are ignored with a LOGWARN line.
* ``whitelisthelo``: host names, compared without regard to case.
* ``whitelistsenders``: a full address (``user@example.com``) or a domain
  (``example.com`` or ``@example.com``: every sender whose domain is exactly
  that). The null sender ``<>`` never matches.
* ``whitelistrcpt``: a full address or a domain, as for senders.

The environment variable ``WHITELISTCLIENT`` (set, even empty, e.g. by a
tcpserver rule ``192.0.2.:allow,WHITELISTCLIENT=""``) whitelists the client
as a whole; it is read at connect time.

Arguments:

  per_recipient 0|1   1: check nothing until RCPT, then run all the checks
                      above for each recipient (host, HELO name, sender,
                      recipient, in this order; the first match answers OK
                      and accepts the recipient), reading each list for the
                      recipient through the ``user_config`` hook (e.g. the
                      ``user_config`` plugin) when one answers. Default 0.
  merge 0|1           per_recipient only: 1 (default) uses the recipient's
                      own list plus the global file; 0 the recipient's own
                      list alone when it has one, else the global file.

Log lines (LOGINFO): ``pass, is a whitelisted host``, ``pass, is
whitelisted client``, ``pass, helo host <name> in whitelisthelo``,
``pass, envelope sender <address> in whitelistsenders``, ``pass, recipient
<address> in whitelistrcpt``, ``karma 5 (<total>)``.

Differences from qpsmtpd 1.0, on purpose:

* An IP address entry matches that address only; the original compared
  text prefixes, so ``10.0.0.1`` also whitelisted ``10.0.0.100``-``199``.
  Prefixes match whole octets and groups (``192.168.1`` is
  ``192.168.1.0/24``, not also ``192.168.10``-``19``), and CIDR networks
  work (the original had no CIDR support).
* ``@example.com`` in ``whitelistsenders``/``whitelistrcpt`` means the
  domain (the original only knew ``example.com``).
* The original's per_recipient/merge lookup never reached any per-recipient
  configuration (its config call did not pass an address); here the
  ``user_config`` hook answers, and ``merge`` is per plugin line, not
  shared by every whitelist line of the process. The HELO name comes from
  the connection, so no helo/ehlo helper hooks are needed.
* In per_recipient mode the +5 karma for a host or client is given once
  per connection, not once per recipient.

Example ``config/plugins`` line (before the plugins it should exempt)::

  whitelist
"""

import ipaddress
import os
import re

from qpsmtpd.constants import DECLINED, LOGDEBUG, LOGWARN, OK
from qpsmtpd.plugin import Plugin

_IPV4_PREFIX = re.compile(r"(?:\d{1,3}\.){0,2}\d{1,3}\.?", re.ASCII)
_IPV6_PREFIX = re.compile(r"(?:[0-9a-f]{1,4}:){0,6}[0-9a-f]{1,4}:?", re.ASCII)


class Whitelist(Plugin):
    def register(self, *args):
        self.args = self.parse_args(args, {"per_recipient": "0", "merge": "1"})
        self.per_recipient = _true(self.args["per_recipient"])
        self.merge = _true(self.args["merge"])
        # Parsed whitelisthosts, keyed by the lines they came from.
        self._hosts = ((), ())
        if self.per_recipient:
            self.register_hook("rcpt", self.check_all_for_recipient)
        else:
            self.register_hook("connect", self.check_host)
            self.register_hook("helo", self.check_helo)
            self.register_hook("ehlo", self.check_helo)
            self.register_hook("mail", self.check_sender)
            self.register_hook("rcpt", self.check_rcpt)

    # -- the checks, in the order their hooks fire --------------------------

    def check_host(self, session, recipient=None):
        connection = session.connection
        address = Plugin.ip_address(connection.remote_ip)
        if address is None:
            return DECLINED
        if "WHITELISTCLIENT" in os.environ:
            self._whitelist_host(session, "whitelistclient", "is whitelisted client")
            return OK
        for network in self.host_networks(self.entries(session, "whitelisthosts", recipient)):
            if address in network:
                self._whitelist_host(session, "whitelisthost", "is a whitelisted host")
                return OK
        self.log(LOGDEBUG, f"skip: {connection.remote_ip} is not whitelisted")
        return DECLINED

    def check_helo(self, session, host, *extra, recipient=None):
        if not host:
            return DECLINED
        wanted = host.lower()
        for entry in self.entries(session, "whitelisthelo", recipient):
            if entry.lower() == wanted:
                session.connection.notes["whitelisthelo"] = 1
                self.log_pass(f"helo host {host} in whitelisthelo")
                return OK
        return DECLINED

    def check_sender(self, session, sender, params=None, recipient=None):
        if sender is None or sender.is_null() or not sender.user or not sender.host:
            return DECLINED
        if _address_listed(sender, self.entries(session, "whitelistsenders", recipient)):
            session.transaction.notes["whitelistsender"] = 1
            self.log_pass(f"envelope sender {sender.address().lower()} in whitelistsenders")
            return OK
        return DECLINED

    def check_rcpt(self, session, recipient, params=None):
        if not recipient.user or not recipient.host:
            return DECLINED
        entries = self.entries(session, "whitelistrcpt", recipient)
        if _address_listed(recipient, entries):
            notes = session.transaction.notes
            notes["whitelistrcpt"] = (notes.get("whitelistrcpt") or 0) + 1
            self.log_pass(f"recipient {recipient.address().lower()} in whitelistrcpt")
            return OK
        return DECLINED

    def check_all_for_recipient(self, session, recipient, params):
        """per_recipient mode: every check at RCPT, with this recipient's lists."""
        if self.check_host(session, recipient) == OK:
            return OK
        if self.check_helo(session, session.connection.hello_host,
                           recipient=recipient) == OK:
            return OK
        if self.check_sender(session, session.transaction.sender,
                             recipient=recipient) == OK:
            return OK
        return self.check_rcpt(session, recipient)

    # -- helpers ---------------------------------------------------------------

    def _whitelist_host(self, session, note, message):
        notes = session.connection.notes
        first_time = not notes.get(note)
        notes[note] = 1
        self.log_pass(message)
        if first_time:
            self.adjust_karma(session, 5)

    def entries(self, session, name, recipient=None):
        """The first word of each line of list ``name``; in per_recipient mode
        the lists of ``recipient``."""
        if recipient is None or not self.per_recipient:
            lines = self.config_list(name)
        else:
            own = session.user_config(recipient, name)
            lines = own + self.config_list(name) if self.merge else own
        words = []
        for line in lines:
            line = line.strip()
            if line and not line.startswith("#"):
                words.append(line.split()[0])
        return words

    def host_networks(self, entries):
        entries = tuple(entries)
        cached_entries, networks = self._hosts
        if entries == cached_entries:
            return networks
        networks = []
        for entry in entries:
            network = host_network(entry)
            if network is None:
                self.log(LOGWARN, f"ignoring invalid entry in whitelisthosts: {entry}")
            else:
                networks.append(network)
        self._hosts = (entries, tuple(networks))
        return self._hosts[1]


def host_network(entry):
    """The network a ``whitelisthosts`` entry stands for, or None.

    ``192.0.2.7`` -> 192.0.2.7/32; ``192.0.2.`` and ``192.0.2`` ->
    192.0.2.0/24; ``2001:db8:`` -> 2001:db8::/32; CIDR as written.
    """
    entry = entry.lower()
    if "/" in entry:
        try:
            return ipaddress.ip_network(entry, strict=False)
        except ValueError:
            return None
    address = Plugin.ip_address(entry)
    if address is not None:
        return ipaddress.ip_network(address)
    if _IPV4_PREFIX.fullmatch(entry):
        octets = entry.rstrip(".").split(".")
        if all(int(octet) <= 255 for octet in octets):
            padded = ".".join(octets + ["0"] * (4 - len(octets)))
            return ipaddress.ip_network(f"{padded}/{8 * len(octets)}")
        return None
    if ":" in entry and _IPV6_PREFIX.fullmatch(entry):
        groups = entry.rstrip(":").split(":")
        padded = ":".join(groups + ["0"] * (8 - len(groups)))
        return ipaddress.ip_network(f"{padded}/{16 * len(groups)}")
    return None




def _address_listed(address, entries):
    """True when ``user@host`` or the domain of ``address`` is an entry."""
    full = address.address().lower()
    host = address.host.lower()
    for entry in entries:
        entry = entry.lower()
        if entry == full or entry.lstrip("@") == host:
            return True
    return False


def _true(value):
    return str(value).strip().lower() not in ("0", "", "no", "false", "off")
