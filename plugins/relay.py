"""relay - decide whether the client may relay mail through us.

At connect time the plugin sets ``connection.relay_client`` for clients
allowed to send mail to any domain (``rcpt_ok`` then accepts every
recipient from them, and ``is_immune`` lets them skip most checks). The
places are searched in this order; the first that decides wins:

1. ``config/norelayclients``: a client listed here is never a relay
   client, whatever the other places say (``RELAYCLIENT`` included). Lines
   are an IP address or a prefix ending in ``.`` or ``:`` (``192.0.2.``,
   ``2001:db8:1:``).
2. the environment variable ``RELAYCLIENT``: when it is set (even empty, as
   tcpserver rules like ``127.:allow,RELAYCLIENT=""`` set it) the client
   is a relay client. Read at connect time, so the per-connection
   ``qpsmtpd`` program under tcpserver honours its rules file.
3. ``config/relayclients``: lines are an IP address, a prefix ending in
   ``.`` or ``:``, or a network in CIDR notation (``10.1.0.0/24``,
   ``2001:db8:e431:ae06::/64``). ``::1`` is always a relay client.
4. ``config/morerelayclients.cdb``: keys are IP addresses or prefixes as in
   ``relayclients`` (no CIDR); better than ``relayclients`` for long lists.

How a client address is matched against addresses and prefixes: IPv4
``192.0.2.7`` is looked up as ``192.0.2.7``, ``192.0.2.``, ``192.0.`` and
``192.``. IPv6 is looked up as the compressed address, the full address
(with and without leading zeros in each group), and every group prefix
ending in ``:`` in both spellings (``2001:db8:``, ``2001:0db8:``) and, for
qpsmtpd 1.0 compatibility, the zero-padded group prefixes without the
trailing colon (``2001:0db8``). An IPv4 client seen on an IPv6 socket
(``::ffff:192.0.2.7``) is matched as IPv4. Hex digits are compared in
lower case.

Fixed on purpose (the original's bugs): a CIDR network includes its first
and last address (``192.0.2.0/24`` matches ``192.0.2.0`` and
``192.0.2.255``); the original left both out. A client in
``norelayclients`` no longer deletes ``RELAYCLIENT`` from the process
environment (a worker serves further connections, and the variable would
be gone for them); it is ignored for that connection only.

The three files are parsed once per process and again only when they
change; an unchanged ``morerelayclients.cdb`` costs one ``stat()`` per
connection.

Arguments:

  only 1    relay-only server: at RCPT, relay clients are accepted at once
            (OK, later rcpt plugins do not run) and everyone else gets
            ``550 relaying denied``. Default: off. List ``relay`` before the
            other rcpt plugins for this to work.

Log lines (LOGINFO): ``pass, enabled by env``, ``pass, cidr match (<ip>)``,
``pass, octet matched localhost (::1)``, ``pass, octet match in
relayclients (<prefix>)``, ``pass, octet match in morerelayclients
(<prefix>)``, ``fail, disabled by norelayclients (<prefix>)``, ``skip, no
match``.

Example ``config/plugins`` line (before ``rcpt_ok``)::

  relay
"""

import ipaddress
import os

from qpsmtpd.constants import DECLINED, DENY, LOGDEBUG, LOGINFO, LOGWARN, OK
from qpsmtpd.plugin import Plugin


class Relay(Plugin):
    def register(self, *args):
        self.args = self.parse_args(args)
        if self.args.get("only") not in (None, "", "0"):
            self.register_hook("rcpt", self.relay_only)

    # -- connect ---------------------------------------------------------------

    def hook_connect(self, session):
        connection = session.connection
        remote_ip = connection.remote_ip
        keys = ip_prefixes(remote_ip)

        no_relay = self.parsed_config("norelayclients", _entry_set)
        hit = next((key for key in keys if key in no_relay), None)
        if hit is not None:
            # RELAYCLIENT is ignored for this connection; the process
            # environment is left alone for the next one.
            connection.relay_client = False
            self.log_fail(f"disabled by norelayclients ({hit})")
            return DECLINED

        if "RELAYCLIENT" in os.environ:
            connection.relay_client = True
            self.log_pass("enabled by env")
            return DECLINED

        if self.is_in_cidr_block(remote_ip) or self.is_octet_match(remote_ip, keys):
            connection.relay_client = True
            return DECLINED

        self.log_skip("no match")
        return DECLINED

    def is_in_cidr_block(self, remote_ip):
        networks, _ = self.relayclients()
        if not networks:
            return False
        address = Plugin.ip_address(remote_ip)
        if address is None:
            self.log_error(f"not an IP address: {remote_ip!r}")
            return False
        for network in networks:
            if address.version == network.version and address in network:
                self.log_pass(f"cidr match ({remote_ip})")
                return True
        self.log(LOGDEBUG, "no cidr match")
        return False

    def is_octet_match(self, remote_ip, keys):
        address = Plugin.ip_address(remote_ip)
        if address is not None and address == ipaddress.IPv6Address("::1"):
            self.log_pass(f"octet matched localhost ({remote_ip})")
            return True
        _, prefixes = self.relayclients()
        more = self.parsed_config_map("morerelayclients")
        for key in keys:
            if key in prefixes:
                self.log_pass(f"octet match in relayclients ({key})")
                return True
            if key in more:
                self.log_pass(f"octet match in morerelayclients ({key})")
                return True
        self.log(LOGDEBUG, "no octet match")
        return False

    def relayclients(self):
        """``(networks, addresses and prefixes)`` from ``config/relayclients``."""
        return self.parsed_config("relayclients", self.parse_relayclients)

    def parse_relayclients(self, lines):
        networks, prefixes = [], set()
        for line in lines:
            if not line.split():
                continue
            entry = line.split()[0]
            if "/" in entry:
                try:
                    networks.append(ipaddress.ip_network(entry, strict=False))
                except ValueError:
                    self.log(LOGWARN, f"ignoring invalid network in relayclients: {entry}")
                continue
            prefixes.add(_normal_entry(entry))
        return tuple(networks), frozenset(prefixes)

    # -- rcpt (only with "only 1") ------------------------------------------------

    def relay_only(self, session, recipient, params):
        if session.connection.relay_client:
            self.log_pass("relay client")
            return OK
        self.log(LOGINFO, "fail, relay only and not a relay client")
        return DENY


def _entry_set(lines):
    """``norelayclients`` lines as the set of lookup keys they name."""
    return frozenset(_normal_entry(line.split()[0]) for line in lines if line.split())


def _normal_entry(entry):
    """A config entry as the lookup keys spell it: full addresses compressed,
    prefixes lower-cased."""
    entry = entry.strip().lower()
    address = Plugin.ip_address(entry)
    return str(address) if address is not None else entry


def ip_prefixes(remote_ip):
    """The keys a client address is looked up under, most specific first."""
    address = Plugin.ip_address(remote_ip)
    if address is None:
        return [str(remote_ip).lower()] if remote_ip else []
    if address.version == 4:
        octets = str(address).split(".")
        return [str(address)] + [".".join(octets[:n]) + "." for n in (3, 2, 1)]
    padded = address.exploded.split(":")
    bare = [group.lstrip("0") or "0" for group in padded]
    keys = [str(address), ":".join(bare), ":".join(padded)]
    for n in range(7, 0, -1):
        keys += [":".join(bare[:n]) + ":", ":".join(padded[:n]) + ":",
                 ":".join(padded[:n])]
    return list(dict.fromkeys(keys))
