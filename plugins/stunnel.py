"""stunnel - take the client's address from a PROXY line sent by a local
proxy (stunnel with ``protocol = proxy``, HAProxy ``send-proxy``).

A TLS front end such as stunnel terminates port 465 and connects to us on
127.0.0.1; without help every session would appear to come from there. With
the proxy's PROXY protocol (version 1, the text form) the proxy first sends
one line naming the real client::

  PROXY TCP4 198.51.100.7 192.0.2.1 50060 465
  PROXY TCP6 2001:db8::7 2001:db8::1 50060 465
  PROXY UNKNOWN

(fields: protocol, source address, destination address, source port,
destination port). The line reaches us as an unknown command; this plugin
answers it.

Accepted only when all of these hold:

* the connection comes from 127.0.0.1 or ::1 (the local proxy);
* it is the first command of the connection, and the first PROXY line;
* the line is well formed: ``TCP4`` with two IPv4 addresses or ``TCP6``
  with two IPv6 addresses, two ports 0-65535, fields separated by single
  spaces, at most 107 bytes with CR LF (the protocol's limit).

Then the connection's ``remote_ip``, ``remote_port``, ``local_ip`` and
``local_port`` become the line's, ``remote_host`` and ``remote_info``
become ``[<ip>]`` (no reverse DNS lookup here), and the connection notes
``proxy`` (``YES``), ``protocol``, ``remote_ip``, ``local_ip``,
``remote_port`` and ``local_port`` are set. The HELO reply, the Received
header and every later plugin then see the real client. Nothing is sent back
(DONE): the client behind the proxy never sees the line. ``PROXY UNKNOWN``
(the proxy does not know the client's address) is accepted the same way and
keeps the connection's own addresses (notes ``proxy`` and ``protocol``
only).

Because the connect hooks have already run for the proxy's own address,
what they granted to 127.0.0.1 is withdrawn when the peer changes:
``relay_client`` becomes false and the ``whitelisthost`` note is removed.
Otherwise every client behind the proxy would inherit the rights of
localhost (commonly a relay client). Clients that must relay through the
proxy should authenticate.

Refusals (the connection's addresses stay as they are):

* from any other client: ``500 PROXY not accepted from <ip>``;
* a second PROXY line, or one after another command:
  ``500 PROXY only allowed once, before any other command``. (One gap:
  ``MAIL`` before ``HELO`` is refused by the engine without running any
  hook, so the plugin cannot see it; it changes nothing, so a PROXY line
  after it is still taken as the first command);
* a malformed line from the local proxy: ``501 Syntax error in PROXY line:
  <what is wrong>`` and the connection is closed - the proxy is
  misconfigured, and the session must not go on as if the client were the
  proxy.

Any other unknown command is left to the plugins after this one (DECLINED),
so ``count_unrecognized_commands`` still counts it. Fixed on purpose: the
original answered OK there, which kept every later unrecognized_command
plugin from running.

The connection note ``proxy_window_closed`` records that another command
has been seen. List ``stunnel`` before ``count_unrecognized_commands`` so
that the PROXY line is not counted as junk.

Argument: ``proxy on`` turns the plugin on; without it (or with ``proxy
off``) the plugin registers no hooks and says so in the log.

Log lines (LOGINFO): ``proxy protocol enabled``, ``pass, proxied
<ip>:<port> -> <ip>:<port> (TCP4)``, ``pass, PROXY UNKNOWN, keeping
<ip>``, ``fail, <why>``.

Example ``config/plugins`` line (the local stunnel connects to port 25 or
another port this server listens on)::

  stunnel proxy on
"""

import ipaddress

from qpsmtpd.constants import DECLINED, DENY, DONE, LOGINFO
from qpsmtpd.plugin import Plugin

MAX_LINE = 107 - len("\r\n")
TOO_LATE = "PROXY only allowed once, before any other command"
LOCAL_PROXIES = frozenset(("127.0.0.1", "::1", "::ffff:127.0.0.1"))
_ADDRESS_TYPES = {"TCP4": ipaddress.IPv4Address, "TCP6": ipaddress.IPv6Address}

# Any of these hooks firing means a command other than PROXY has arrived.
_OTHER_COMMAND_HOOKS = ("helo_parse", "ehlo_parse", "mail_parse", "rcpt_parse",
                        "auth_parse", "data", "vrfy", "noop", "help", "quit",
                        "reset_transaction")


class ProxyLineError(ValueError):
    """A malformed PROXY line; the message says what is wrong."""


class Stunnel(Plugin):
    def register(self, *args):
        self.args = self.parse_args(args)
        if str(self.args.get("proxy", "")).upper() != "ON":
            self.log(LOGINFO, "proxy protocol disabled (argument 'proxy on' not given)")
            return False
        self.log(LOGINFO, "proxy protocol enabled")
        for hook in _OTHER_COMMAND_HOOKS:
            self.register_hook(hook, self.close_window)

    def close_window(self, session, *args):
        session.connection.notes["proxy_window_closed"] = True
        return DECLINED

    def hook_unrecognized_command(self, session, verb, rest):
        notes = session.connection.notes
        if verb != "proxy":
            notes["proxy_window_closed"] = True
            return DECLINED
        connection = session.connection
        # After a PROXY line remote_ip is the client's: test "once" first.
        if notes.get("proxy"):
            self.log_fail("PROXY line too late")
            return DENY, TOO_LATE
        if connection.remote_ip not in LOCAL_PROXIES:
            self.log_fail(f"PROXY from {connection.remote_ip}, not a local proxy")
            return DENY, f"PROXY not accepted from {connection.remote_ip}"
        if notes.get("proxy_window_closed"):
            self.log_fail("PROXY line too late")
            return DENY, TOO_LATE
        notes["proxy_window_closed"] = True
        try:
            protocol, peer = parse_proxy_line(rest)
        except ProxyLineError as exc:
            self.log_fail(f"malformed PROXY line: {exc}")
            session.respond(501, f"Syntax error in PROXY line: {exc}", esc="5.5.2")
            session.disconnect()
            return DONE
        notes["proxy"] = "YES"
        notes["protocol"] = protocol
        if peer is None:
            self.log_pass(f"PROXY UNKNOWN, keeping {connection.remote_ip}")
            return DONE
        self.set_peer(connection, *peer)
        self.log_pass(f"proxied {connection.remote_ip}:{connection.remote_port} -> "
                      f"{connection.local_ip}:{connection.local_port} ({protocol})")
        return DONE

    def set_peer(self, connection, remote_ip, local_ip, remote_port, local_port):
        notes = connection.notes
        connection.remote_ip = notes["remote_ip"] = remote_ip
        connection.local_ip = notes["local_ip"] = local_ip
        connection.remote_port = notes["remote_port"] = remote_port
        connection.local_port = notes["local_port"] = local_port
        connection.remote_host = connection.remote_info = f"[{remote_ip}]"
        # Decisions the connect hooks made for the proxy's own address.
        if connection.relay_client or notes.get("whitelisthost"):
            self.log(LOGINFO, "relay_client and whitelisthost of the local proxy "
                              "withdrawn for the proxied client")
        connection.relay_client = False
        notes.pop("whitelisthost", None)


def parse_proxy_line(rest):
    """``(protocol, (remote_ip, local_ip, remote_port, local_port))`` from
    the text after ``PROXY``; the second item is None for ``UNKNOWN``.

    Raises ``ProxyLineError`` for anything that is not a PROXY v1 line.
    """
    if len("PROXY " + rest) > MAX_LINE:
        raise ProxyLineError("line longer than 107 bytes")
    fields = rest.split(" ")
    protocol = fields[0]
    if protocol == "UNKNOWN":
        return protocol, None
    address_type = _ADDRESS_TYPES.get(protocol)
    if address_type is None:
        raise ProxyLineError(f"unknown protocol {protocol!r}, expected TCP4, TCP6 "
                             "or UNKNOWN")
    if len(fields) != 5:
        raise ProxyLineError("expected: PROXY <protocol> <source address> "
                             "<destination address> <source port> <destination port>")
    _, remote_ip, local_ip, remote_port, local_port = fields
    addresses = []
    for text in (remote_ip, local_ip):
        try:
            addresses.append(str(address_type(text)))
        except ValueError:
            raise ProxyLineError(f"{text!r} is not an {protocol} address") from None
    ports = []
    for text in (remote_port, local_port):
        if not (text.isascii() and text.isdigit()) or int(text) > 65535 or \
                (len(text) > 1 and text[0] == "0"):
            raise ProxyLineError(f"{text!r} is not a port number")
        ports.append(int(text))
    return protocol, (addresses[0], addresses[1], ports[0], ports[1])
