"""ident/p0f - the client's operating system, by passive TCP fingerprinting.

p0f watches the network and recognises the operating system that opened a
TCP connection from how its SYN packet looks. At connect this plugin asks
the running p0f daemon over its unix socket about the client and leaves the
answer in the connection note ``p0f``, a dict with:

  genre      operating system (``Linux``, ``Windows``)
  detail     its version (``3.11 and newer``, ``7 or 8``)
  distance   network hops (-1 when unknown)
  link       link type (``Ethernet or modem``, ``DSL``)
  uptime     uptime in hours (0 when unknown)

and with p0f 3 also p0f's own fields: ``os_name``, ``os_flavor``,
``link_type``, ``uptime_min``, ``up_mod_days``, ``first_seen``,
``last_seen``, ``total_conn``, ``last_nat``, ``last_chg``, ``bad_sw``,
``os_match_q``, ``http_name``, ``http_flavor``, ``language``.

The log line (LOGINFO) is ``<genre> <detail>``; ``skip, no match`` when p0f
has not seen the client, ``error, ...`` when p0f cannot be asked (the
session goes on).

What it can do with the answer:

* ``smite_os <regex>``: a genre matching the (case-insensitive) regular
  expression costs 1 karma point;
* ``config/p0f_blocked_operating_systems``: lines of phrases (matched as
  words, case-insensitive) or ``/regex/`` against ``<genre> <detail>``; a
  match refuses every recipient: ``550 OS Blocked``;
* ``add_headers`` (default true): ``X-P0F-Genre`` and ``X-P0F-Link-Type``
  on each message;
* the greylisting plugin's ``p0f`` option uses the note.

Arguments: the socket path first, then ``key value`` pairs:

  version 3          p0f 3 (default) or 2
  local_ip <ip>      p0f 2 only: this server's address as p0f sees it
                     (behind NAT), default the connection's local address
  smite_os <regex>
  add_headers true
  loglevel

Start p0f 3 like this (as root; it drops to the given user)::

  p0f -i eth0 -u qpsmtpd -d -s /run/p0f.sock 'tcp dst port 25'

Differences from qpsmtpd 1.0: IPv6 clients are asked about correctly with
p0f 3 (1.0 sent a malformed query); the socket has a 2-second timeout.

Example ``config/plugins`` line (before plugins that use the note)::

  ident/p0f /run/p0f.sock smite_os windows
"""

import random
import re
import socket
import struct

from qpsmtpd.constants import DECLINED, DENY, LOGINFO, LOGWARN
from qpsmtpd.plugin import Plugin, PluginError

V3_QUERY_MAGIC = 0x50304601
V3_RESPONSE_MAGIC = 0x50304602
V3_BAD_QUERY, V3_OK, V3_NO_MATCH = 0x00, 0x10, 0x20
V3_RESPONSE = struct.Struct("=IIIIIIIIIhBB32s32s32s32s32s32s")   # 232 bytes
V2_MAGIC = 0x0DEFACED
V2_QUERY = struct.Struct("=III4s4sHH")
V2_RESPONSE = struct.Struct("=IIB20s40sb30s30sBBBhH4s")     # uptime: network order
TIMEOUT = 2.0


class P0f(Plugin):
    def register(self, socket_path=None, *args):
        if not socket_path:
            raise PluginError("ident/p0f: the p0f socket path is required "
                              "(ident/p0f /run/p0f.sock)")
        self.socket_path = socket_path
        self.args = self.parse_args(args, {"version": "3", "add_headers": "true"})
        if self.args["version"] not in ("2", "3"):
            raise PluginError(f"ident/p0f: version must be 2 or 3, not "
                              f"{self.args['version']!r}")
        self.smite = None
        if self.args.get("smite_os"):
            try:
                self.smite = re.compile(self.args["smite_os"], re.I)
            except re.error as exc:
                raise PluginError(f"ident/p0f: bad smite_os regex: {exc}") from exc
        if str(self.args["add_headers"]).lower() not in ("false", "0", "no"):
            self.register_hook("data_post", self.add_headers)

    # -- hooks, in the order they fire ---------------------------------------------

    def hook_connect(self, session):
        connection = session.connection
        try:
            if self.args["version"] == "3":
                result = query_v3(self.socket_path, connection.remote_ip)
            else:
                result = query_v2(self.socket_path, connection.remote_ip,
                                  self.args.get("local_ip") or connection.local_ip,
                                  connection.remote_port, connection.local_port)
        except P0fError as exc:
            self.log_error(str(exc))
            return DECLINED
        if result is None:
            self.log_skip("no match")
            return DECLINED
        connection.notes["p0f"] = result
        self.log(LOGINFO, f"{result['genre']} {result['detail']}".strip())
        if self.smite and result["genre"] and self.smite.search(result["genre"]):
            self.log(LOGINFO, f"fail, smite_os matched {result['genre']}")
            self.adjust_karma(session, -1)
        return DECLINED

    def hook_rcpt(self, session, recipient, params):
        p0f = session.connection.notes.get("p0f")
        if not isinstance(p0f, dict):
            return DECLINED
        blocked = self.config_list("p0f_blocked_operating_systems")
        if not blocked:
            return DECLINED
        os_text = f"{p0f.get('genre', '')} {p0f.get('detail', '')}".strip()
        for entry in blocked:
            entry = entry.strip()
            if len(entry) > 2 and entry.startswith("/") and entry.endswith("/"):
                try:
                    hit = re.search(entry[1:-1], os_text, re.I)
                except re.error:
                    self.log(LOGWARN, f"bad regex in p0f_blocked_operating_systems: {entry}")
                    continue
            else:
                hit = re.search(r"(?<!\w)" + re.escape(entry) + r"(?!\w)", os_text, re.I)
            if hit:
                self.log_fail(f"OS blocked: {os_text} ({entry})")
                return DENY, "OS Blocked"
        return DECLINED

    def add_headers(self, session):
        p0f = session.connection.notes.get("p0f")
        header = session.transaction.header
        if not isinstance(p0f, dict) or header is None:
            return DECLINED
        for name, key in (("X-P0F-Genre", "genre"), ("X-P0F-Link-Type", "link")):
            header.delete(name)
            if p0f.get(key):
                header.add(name, str(p0f[key]), 0)
        return DECLINED


class P0fError(Exception):
    """p0f could not be asked; the message says why."""


def v3_query(remote_ip):
    """The 21-byte p0f 3 API query for ``remote_ip`` (IPv4 or IPv6)."""
    address = Plugin.ip_address(remote_ip)
    if address is None:
        raise P0fError(f"not an IP address: {remote_ip!r}")
    packed = address.packed
    return struct.pack("=IB16s", V3_QUERY_MAGIC, address.version, packed)


def parse_v3(response):
    """The note dict for a p0f 3 response; None for "no match";
    P0fError for anything malformed or refused."""
    if len(response) != V3_RESPONSE.size:
        raise P0fError(f"p0f: short response ({len(response)} bytes)")
    fields = V3_RESPONSE.unpack(response)
    magic, status = fields[0], fields[1]
    if magic != V3_RESPONSE_MAGIC:
        raise P0fError("p0f: bad response magic")
    if status == V3_BAD_QUERY:
        raise P0fError("p0f: bad query")
    if status == V3_NO_MATCH:
        return None
    if status != V3_OK:
        raise P0fError(f"p0f: unknown status {status:#x}")
    labels = ("first_seen", "last_seen", "total_conn", "uptime_min", "up_mod_days",
              "last_nat", "last_chg", "distance", "bad_sw", "os_match_q")
    result = dict(zip(labels, fields[2:12]))
    for label, raw in zip(("os_name", "os_flavor", "http_name", "http_flavor",
                           "link_type", "language"), fields[12:]):
        result[label] = _text(raw)
    result.update(genre=result["os_name"], detail=result["os_flavor"],
                  link=result["link_type"], uptime=result["uptime_min"] // 60)
    return result


def query_v3(socket_path, remote_ip):
    return parse_v3(_ask(socket_path, v3_query(remote_ip), V3_RESPONSE.size))


def v2_query(remote_ip, local_ip, remote_port, local_port, ident=None):
    """The p0f 2 query (IPv4 only)."""
    source, destination = Plugin.ip_address(remote_ip), Plugin.ip_address(local_ip)
    if source is None or source.version != 4 or destination is None \
            or destination.version != 4:
        raise P0fError("p0f 2 knows IPv4 only")
    if ident is None:
        ident = random.getrandbits(32)
    return V2_QUERY.pack(V2_MAGIC, 1, ident, source.packed, destination.packed,
                         int(remote_port or 0), int(local_port or 0))


def parse_v2(response):
    if len(response) < V2_RESPONSE.size:
        raise P0fError(f"p0f: short response ({len(response)} bytes)")
    (magic, _ident, kind, genre, detail, distance, link, _tos, _fw, _nat, _real,
     _score, _mflags, uptime) = V2_RESPONSE.unpack(response[:V2_RESPONSE.size])
    if magic != V2_MAGIC:
        raise P0fError("p0f: bad response magic")
    if kind == 1:
        raise P0fError("p0f: p0f did not honor our query")
    if kind == 2:
        return None
    return {"genre": _text(genre), "detail": _text(detail), "distance": distance,
            "link": _text(link), "uptime": int.from_bytes(uptime, "big")}


def query_v2(socket_path, remote_ip, local_ip, remote_port, local_port):
    query = v2_query(remote_ip, local_ip, remote_port, local_port)
    return parse_v2(_ask(socket_path, query, V2_RESPONSE.size))


def _ask(socket_path, query, size):
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(TIMEOUT)
            sock.connect(socket_path)
            sock.sendall(query)
            response = b""
            while len(response) < size:
                chunk = sock.recv(size - len(response))
                if not chunk:
                    break
                response += chunk
    except OSError as exc:
        raise P0fError(f"p0f: cannot query {socket_path}: "
                       f"{exc.strerror or exc}") from exc
    return response


def _text(raw):
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")
