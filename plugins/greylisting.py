"""greylisting - delay mail from senders we have not seen before.

A mail server that is new to us is told to try again later
(``450 This mail is temporarily denied``). Real MTAs retry after some
minutes; most spam software never does. A retry after ``black_timeout``
(and within ``grey_timeout``) is accepted and whitelists the sender for
``white_timeout``; every delivery renews that.

What "the sender" is, is the triplet: the remote IP (``remote_ip 1``,
default), the envelope sender (``sender 1``) and the recipient
(``recipient 1``), in any combination. With only the IP (the default), a
server that got one message through is whitelisted for every sender and
recipient.

The states of a triplet::

  unknown, or timed out        -> store it (black), 450        "initial DENYSOFT"
  black: < black_timeout old   -> 450                          "black DENYSOFT"
  black: < grey_timeout old    -> accept, now white            "grey->white"
  black: older                 -> as unknown                   "timed out (grey)"
  white: < white_timeout since the last delivery -> accept     "white"
  white: older                 -> as unknown                   "timed out (white)"

The check runs at MAIL FROM, or at RCPT TO when the recipient is part of
the triplet or with ``per_recipient`` (there, a null sender is deferred at
DATA instead, so address probes keep working). ``deny_late 1`` moves the
450 to the DATA command (``451 This mail is temporarily denied``).

Never greylisted: relay clients, whitelisted hosts and senders (the
``whitelist`` plugin), clients listed in one of the files named in
``config/greylist_exclude_files`` (each line an IP address, a network
``192.0.2.0/24``, a host name that the client's reverse DNS name equals or
ends in, or ``/regex/`` on that name), clients outside the ``p0f``
condition and clients from the ``geoip`` countries. A message whose every
recipient is in ``whitelistrcpt`` passes the deferred check at DATA.

The state lives in the store (SQLite by default, Redis for several MX hosts:
they then share one greylist). When the store cannot be reached the mail is
not delayed (``error, store: ...`` in the log).

Arguments (defaults), also read as ``key value`` lines from
``config/denysoft_greylist`` (arguments win):

  remote_ip 1, sender 0, recipient 0   what makes up the triplet
  black_timeout 3000                   seconds a new triplet is refused
  grey_timeout 12000                   seconds after its first attempt a
                                       triplet may come back to be accepted
  white_timeout 3110400                seconds (36 days) a whitelisted
                                       triplet stays white without mail
  reject 1                             0: track and log only
  deny_late 0
  per_recipient 0                      1: read ``denysoft_greylist`` for each
                                       recipient (``user_config`` hook) and
                                       greylist at RCPT; a recipient opts out
                                       with ``reject 0`` (tracked, not
                                       delayed) or ``mode off`` (ignored), and
                                       opts in with ``reject 1`` where the
                                       site default is ``reject 0``
  p0f genre,windows[,link,dsl,distance,3,uptime,100,detail,...]
                                       greylist only clients that match one
                                       of these (genre/link/detail: regex;
                                       distance: more hops; uptime: fewer)
  geoip US,CA                          never greylist these countries
  store <url> | db_dir <dir> | redis host[:port]   where the state lives
                                       (default config/store, else
                                       var/db/qpsmtpd.sqlite)
  mode denysoft|testonly|off           legacy: testonly = reject 0, off =
                                       do nothing, when reject is not given
  loglevel

Accepted and ignored: ``nfslock``, ``per_recipient_db``, ``upgrade`` (old
DBM data is converted by ``python3 -m qpsmtpd.karma_tool import --name
greylisting``).

Storage: key ``<ip as integer>[:sender][:recipient]``, value
``<timestamp>:<new>:<black>:<white>`` (qpsmtpd's format, so old data can be
imported). Entries disappear after ``white_timeout`` without use.

Log lines (LOGINFO): ``fail, initial DENYSOFT, unknown``, ``fail, black
DENYSOFT - <n> deferred connections``, ``pass, updated grey->white``,
``pass, white, <n> deliveries``, ``... (timed out, grey|white)``, ``skip,
...`` for the exemptions; with ``reject 0`` the fail lines read ``fail,
tolerated, ...``.

Differences from qpsmtpd 1.0, on purpose: ``grey_timeout`` is honoured (1.0
accepted a retry however late it came); the legacy ``mode`` works when
``reject`` is not given (1.0 ignored it); the exclusion files also accept
CIDR networks. As in 1.0's code, TLS connections are not exempt (its manual
says they are).

Example ``config/plugins`` line (after relay and whitelist, before rcpt_ok)::

  greylisting p0f genre,windows geoip US,CA
"""

import ipaddress
import re

from qpsmtpd.constants import DECLINED, DENYSOFT, LOGALERT, LOGDEBUG, LOGWARN, OK
from qpsmtpd.plugin import Plugin, PluginError
from qpsmtpd.store import StoreError, ip_key, now, parse_record

MESSAGE = "This mail is temporarily denied"
DEFAULTS = {
    "remote_ip": "1", "sender": "0", "recipient": "0", "deny_late": "0",
    "black_timeout": str(50 * 60), "grey_timeout": str(3 * 3600 + 20 * 60),
    "white_timeout": str(36 * 24 * 3600),
}
PERMITTED = frozenset((
    "per_recipient", "remote_ip", "sender", "recipient", "black_timeout",
    "grey_timeout", "white_timeout", "deny_late", "db_dir", "nfslock", "p0f",
    "reject", "loglevel", "geoip", "upgrade", "redis", "mode", "store",
    "per_recipient_db"))
P0F_KEYS = ("genre", "detail", "uptime", "link", "distance")


class Greylisting(Plugin):
    def register(self, *args):
        layers = [DEFAULTS, _pairs(self.config_list("denysoft_greylist"))]
        layers.append(self.parse_args(args))
        self.args = {}
        for layer in layers:
            self.args.update(layer)
        unknown = sorted(set(self.args) - PERMITTED)
        if unknown:
            self.log(LOGALERT, f"invalid parameter(s): {','.join(unknown)}")
        self.settings = _settings({}, layers)
        self.by_recipient = _true(self.args.get("recipient")) or \
            _true(self.args.get("per_recipient"))
        if self.by_recipient:
            self.register_hook("rcpt", self.rcpt_handler)
        else:
            self.register_hook("mail", self.mail_handler)
        redis = self.args.get("redis")
        if redis and ":" not in redis:
            redis += ":6379"
        self.store = self.open_store("greylisting", redis)

    # -- hooks, in the order they fire ---------------------------------------------

    def mail_handler(self, session, sender, params):
        code = self.greylist(session, sender, None, self.settings)
        if code != DENYSOFT:
            return DECLINED
        if not self.settings["deny_late"]:
            return DENYSOFT, MESSAGE
        session.transaction.notes["greylist"] = MESSAGE
        return DECLINED

    def rcpt_handler(self, session, recipient, params):
        settings = self.settings
        if _true(self.args.get("per_recipient")):
            own = recipient_config(session, recipient, "denysoft_greylist")
            if own is not None:
                settings = _settings(settings, [_pairs(own)])
        sender = session.transaction.sender
        code = self.greylist(session, sender, recipient, settings)
        if code != DENYSOFT:
            return DECLINED
        if sender is not None and not sender.is_null() and not settings["deny_late"]:
            return DENYSOFT, MESSAGE
        session.transaction.notes["greylist"] = MESSAGE
        return DECLINED

    def hook_data(self, session):
        transaction = session.transaction
        message = transaction.notes.get("greylist")
        if not message:
            return DECLINED
        whitelisted = transaction.notes.get("whitelistrcpt") or 0
        if whitelisted and whitelisted >= len(transaction.recipients):
            self.log_skip("all recipients whitelisted")
            return DECLINED
        return DENYSOFT, message

    # -- the decision ------------------------------------------------------------------

    def greylist(self, session, sender, recipient, settings):
        """DENYSOFT when the triplet must wait (and reject is on), else DECLINED."""
        self.log(LOGDEBUG, "config: " + ",".join(f"{k}={v}" for k, v in sorted(settings.items())))
        if settings["off"]:
            self.log_skip("greylisting is off (mode off)")
            return DECLINED
        if self.is_immune(session) or self.is_excluded(session):
            return DECLINED
        key = self.triplet(session, sender, recipient, settings)
        if key is None:
            return DECLINED
        outcome = {}
        black, grey, white = (settings["black_timeout"], settings["grey_timeout"],
                              settings["white_timeout"])

        def advance(value):
            outcome.clear()   # the store may call this again after a conflict
            timestamp, new, blacks, whites = parse_record(value)
            moment = int(now())
            age = moment - timestamp
            if value is not None and whites:
                if age < white:
                    outcome.update(state="white", count=whites + 1)
                    return f"{moment}:{new}:{blacks}:{whites + 1}"
                outcome["expired"] = "white"
            elif value is not None:
                if age < black:
                    outcome.update(state="black", count=blacks + 1)
                    return f"{timestamp}:{new}:{blacks + 1}:0"
                if age < grey:
                    outcome.update(state="grey")
                    return f"{moment}:{new}:{blacks}:1"
                outcome["expired"] = "grey"
            outcome["state"] = "unknown"
            return f"{moment}:{new + 1}:{blacks}:0"

        try:
            self.store.update(key, advance, expire=max(white, grey))
        except StoreError as exc:
            self.log_error(f"store: {exc}")
            return DECLINED
        state = outcome["state"]
        late = f" (timed out, {outcome['expired']})" if "expired" in outcome else ""
        if state == "white":
            self.log_pass(f"white, {outcome['count']} deliveries")
            return DECLINED
        if state == "grey":
            self.log_pass("updated grey->white")
            return DECLINED
        tolerated = "" if settings["reject"] else "tolerated, "
        if state == "black":
            self.log_fail(f"{tolerated}black DENYSOFT - {outcome['count']} deferred connections")
        else:
            self.log_fail(f"{tolerated}initial DENYSOFT, unknown{late}")
        return DENYSOFT if settings["reject"] else DECLINED

    def triplet(self, session, sender, recipient, settings):
        parts = []
        if settings["remote_ip"]:
            key = ip_key(session.connection.remote_ip)
            if key is None:
                self.log_skip(f"unable to use remote IP {session.connection.remote_ip!r}")
                return None
            parts.append(key)
        if settings["sender"]:
            parts.append(sender.address() if sender is not None else "")
        if settings["recipient"] and recipient is not None:
            parts.append(recipient.address())
        if not parts:
            self.log_error("enable one of remote_ip, sender, or recipient!")
            return None
        return ":".join(parts)

    # -- exemptions ----------------------------------------------------------------------

    def is_excluded(self, session):
        connection = session.connection
        for name in self.config_list("greylist_exclude_files"):
            entries = self.parsed_config(name.strip(), _exclusions)
            if _listed(connection.remote_ip, connection.remote_host, entries):
                self.log_skip(f"excluded by {name.strip()}")
                return True
        if self.args.get("p0f") and not self.p0f_match(session):
            return True
        if self.args.get("geoip") and self.geoip_match(session):
            return True
        return False

    def p0f_match(self, session):
        p0f = session.connection.notes.get("p0f")
        if not isinstance(p0f, dict):
            self.log_skip("p0f info missing")
            return False
        words = [w.strip() for w in str(self.args["p0f"]).split(",")]
        for key, wanted in zip(words[0::2], words[1::2]):
            if key not in P0F_KEYS:
                self.log(LOGWARN, f"discarding invalid match key ({key})")
                continue
            seen = p0f.get(key)
            if seen is None or seen == "" or not wanted:
                continue
            if key in ("distance", "uptime"):
                try:
                    seen, wanted_number = float(seen), float(wanted)
                except ValueError:
                    continue
                if (key == "distance" and seen > wanted_number) or \
                        (key == "uptime" and seen < wanted_number):
                    self.log(LOGDEBUG, f"p0f {key} match ({wanted})")
                    return True
            elif re.search(wanted, str(seen), re.I):
                self.log(LOGDEBUG, f"p0f {key} match ({wanted})")
                return True
        self.log_skip("no p0f match")
        return False

    def geoip_match(self, session):
        notes = session.connection.notes
        country = notes.get("geoip_country")
        if not country:
            self.log(LOGDEBUG, "no geoip country")
            return False
        name = notes.get("geoip_country_name") or ""
        for wanted in str(self.args["geoip"]).split(","):
            if wanted.strip().lower() == str(country).lower():
                shown = f"{country}, {name}" if name else country
                self.log_skip(f"geoip country match ({shown})")
                return True
        self.log(LOGDEBUG, f"no geoip match ({country})")
        return False


# -- settings ---------------------------------------------------------------------------

def recipient_config(session, recipient, name):
    """The ``user_config`` hook's lines for ``recipient``, or None when no
    plugin answered (``session.user_config`` would then give the site file,
    which the plugin's arguments already override)."""
    result = session.run_hooks("user_config", recipient, name)
    if result.code != OK:
        return None
    values = result.values
    if len(values) == 1 and isinstance(values[0], (list, tuple)):
        return list(values[0])
    return [str(v) for v in values]


def _pairs(lines):
    """``key value`` lines -> dict (a line without a value is skipped)."""
    result = {}
    for line in lines or ():
        key, _, value = str(line).strip().partition(" ")
        if key and value.strip():
            result[key] = value.strip()
    return result


def _settings(base, layers):
    """Typed settings from ``base`` and the ``key value`` layers over it."""
    merged = dict(base)
    for layer in layers:
        for key in ("remote_ip", "sender", "recipient", "deny_late"):
            if key in layer:
                merged[key] = _true(layer[key])
        for key in ("black_timeout", "grey_timeout", "white_timeout"):
            if key in layer:
                try:
                    merged[key] = int(float(layer[key]))
                except ValueError as exc:
                    raise PluginError(f"greylisting: {key} must be seconds: "
                                      f"{layer[key]!r}") from exc
        if "reject" in layer:
            merged["reject"], merged["off"] = _true(layer["reject"]), False
        elif "mode" in layer:
            mode = str(layer["mode"]).lower()
            merged["reject"] = mode not in ("testonly", "off")
            merged["off"] = mode == "off"
    merged.setdefault("reject", True)
    merged.setdefault("off", False)
    return merged


def _true(value):
    return str(value or "0").strip().lower() not in ("0", "", "no", "false", "off")


def _exclusions(lines):
    """``(networks, host names, patterns)`` of one exclusion file, parsed
    once per change of the file, not per message."""
    networks, names, patterns = [], set(), []
    for line in lines:
        entry = line.split()[0] if line.split() else ""
        if not entry:
            continue
        if len(entry) > 2 and entry.startswith("/") and entry.endswith("/"):
            try:
                patterns.append(re.compile(entry[1:-1], re.I))
            except re.error:
                pass
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            names.add(entry.lower().rstrip("."))
    return tuple(networks), frozenset(names), tuple(patterns)


def _listed(remote_ip, remote_host, entries):
    """True when an exclusion entry (``_exclusions``) names the client (IP,
    network, host name or ``/regex/`` on the host name)."""
    networks, names, patterns = entries
    address = Plugin.ip_address(remote_ip)
    if address is not None and any(address.version == network.version
                                   and address in network for network in networks):
        return True
    host = (remote_host or "").lower().rstrip(".")
    if not host:
        return False
    labels = host.split(".")
    if any(".".join(labels[i:]) in names for i in range(len(labels))):
        return True
    return any(pattern.search(host) for pattern in patterns)
