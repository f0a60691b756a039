"""uribl - look up the web addresses in a message on URI blocklists.

After DATA the plugin reads the message body as a stream, line by line
(never the whole message at once), collects the host names and addresses
of the links in it, and asks every list of ``config/uribl_zones`` about
each of them - all lookups at once, so the whole check costs at most one
DNS timeout. A listed name is reported as ``<name> in <zone>: <text>``
(the list's TXT text, or the A answer), and the zone's action decides:

  add-header  (default) ``X-URIBL-Match: <report>`` is added at the end of
              the message header; the message is accepted
  deny        ``552 <report>`` (after EHLO ``552 5.7.1``)
  denysoft    ``452 <report>``
  log         only a LOGWARN line

What counts as a link: ``scheme://`` URLs (``http://``, ``https://``,
``ftp://`` ...), with a host name or an address (also in the integer, hex
and octal spellings spammers use: ``http://3221225985/``,
``http://0xc0.0.2.1/``), and host names starting with ``www.``. Before
searching, quoted-printable soft line breaks are joined and ``%XX``,
``=XX`` and ``&#NNN;`` escapes decoded. A host name must end in a real
public suffix (the Public Suffix List); for each one the plugin asks about
the name itself and its registered domain (``www.shop.example.co.uk`` and
``example.co.uk``); an address is asked in reversed form.

At most ``max_names`` distinct names or addresses are checked per message
(default 20): each costs two queries (A and TXT) per list. Further links
are not read (LOGINFO ``stopped at <n> names``).

Config files:

  uribl_zones              ``zone [mask[,mask...]] [action]`` per line. The
                           masks select the lists of a combined list:
                           an A answer 127.a.b.c counts when its last three
                           octets, as a number, share a bit with a mask
                           (``multi.surbl.org 2,8 deny``); no mask or a
                           negative one: any answer in 127.0.0.0/8 (but not
                           the 127.255.255.x error codes) counts. Lists
                           that answer 127.0.0.1 for "query refused" need
                           a mask. The action defaults to the ``action``
                           argument.
  uribl_whitelist_domains  domains never looked up (a name matches when it
                           is the domain or below it).

Arguments:

  action add-header|deny|denysoft|log   default add-header
  timeout N                seconds for the lookups (default: the site's
                           config/dns_timeout, 5)
  checkip yes|no           look up addresses in URLs (default yes)
  check-headers 0|1        also search the header (alias scan-headers;
                           default 0)
  max_names N              the cap above (default 20)

A list that does not answer in time or answers SERVFAIL counts as not
listing (LOGERROR ``<name> query failed: timeout``). A malformed line in
uribl_zones stops the start (and is skipped with a LOGERROR when it appears
later).

Log lines: LOGINFO ``<n> lookups finished in <s> sec (<m> matches)``,
``pass``, ``fail, <report>``, ``skip, no URIs found``, ``skip,
whitelisted URI domain <name>``; LOGWARN ``<report>`` per match.

Differences from qpsmtpd 1.0, on purpose: bare host names in text are only
taken when they start with ``www.`` (the original took any word with a dot
and a two-letter ending, which sent lookups for file names); registered
domains come from the Public Suffix List instead of a fixed list of
two-level country domains; the number of lookups per message is capped;
the timeout is the site's (the original waited up to 30 s).

Example ``config/plugins`` line::

  uribl action deny
"""

import ipaddress
import re
import time

from publicsuffixlist import PublicSuffixList

from qpsmtpd.constants import DECLINED, DENY, DENYSOFT, LOGERROR, LOGINFO, LOGWARN
from qpsmtpd.dns import ip_address, reverse_ip
from qpsmtpd.plugin import Plugin, PluginError

ACTIONS = ("add-header", "deny", "denysoft", "log")
ALL_LISTS = 0x00FFFFFF
LINE_LIMIT = 65536
_LISTED = ipaddress.ip_network("127.0.0.0/8")
_LIST_ERRORS = ipaddress.ip_network("127.255.255.0/24")

_ESCAPE = re.compile(r"[=%]([0-9A-Fa-f]{2})")
_ENTITY = re.compile(r"&#(\d{2,3});?")
_URL_HOST = re.compile(r"\w{3,16}:/+(?:[^\s/@]+@)?([A-Za-z0-9][A-Za-z0-9.\-]*)", re.ASCII)
_WWW_HOST = re.compile(r"(?<![\w.\-])(www\.[A-Za-z0-9][A-Za-z0-9.\-]*)", re.ASCII)
_NUMBER = r"(?:0[xX][0-9A-Fa-f]+|\d+)"
_DOTTED = re.compile(rf"{_NUMBER}(?:\.{_NUMBER}){{3}}\Z")

_SUFFIXES = PublicSuffixList(accept_unknown=False, only_icann=True)


class Uribl(Plugin):
    def register(self, *args):
        self.args = self.parse_args(args, {"action": "add-header", "checkip": "yes",
                                           "max_names": "20"})
        self.action = self.args["action"].lower()
        if self.action not in ACTIONS:
            raise PluginError(f"uribl: unknown action {self.args['action']!r} "
                              f"({', '.join(ACTIONS)})")
        self.check_ip = self.args["checkip"].lower() not in ("no", "0", "false")
        self.check_headers = _true(self.args.get("check-headers")
                                   or self.args.get("scan-headers"))
        self.max_names = int(self.args["max_names"])
        if self.args.get("timeout"):
            self.dns_timeout = float(self.args["timeout"])
        lines = tuple(self.config_list("uribl_zones"))
        self._zones = (lines, parse_zones(lines, self.action))

    def hook_data_post(self, session):
        zones = self.zones()
        if not zones:
            self.log_skip("no zones")
            return DECLINED
        transaction = session.transaction
        names = self.find_names(transaction)
        if not names:
            self.log_skip("no URIs found")
            return DECLINED
        queries = [(f"{name}.{zone}", rdtype) for name in names
                   for zone, _, _ in zones for rdtype in ("A", "TXT")]
        started = time.monotonic()
        answers = iter(self.resolve_many(session, queries))
        matches = []
        for name in names:
            for zone, mask, action in zones:
                addresses, texts = next(answers), next(answers)
                for answer in (addresses, texts):
                    if answer.temporary:
                        self.log(LOGERROR, f"{answer.name} query failed: {answer.reason}")
                if listed(addresses, mask):
                    report = f"{name} in {zone}: {texts[0] if texts else addresses[0]}"
                    matches.append((action, report))
        self.log(LOGINFO, f"{len(queries)} lookups finished in "
                          f"{time.monotonic() - started:.2f} sec "
                          f"({len(matches)} match{'' if len(matches) == 1 else 'es'})")
        return self.act(session, matches)

    def act(self, session, matches):
        header = session.transaction.header
        for action, report in matches:
            self.log(LOGWARN, report)
            if action == "add-header" and header is not None:
                header.add("X-URIBL-Match", report)
            elif action == "deny":
                self.log_fail(report)
                return DENY, report
            elif action == "denysoft":
                self.log_fail(report)
                return DENYSOFT, report
        self.log_pass()
        return DECLINED

    # -- finding the names -------------------------------------------------------

    def find_names(self, transaction):
        """Distinct names to look up (reversed addresses for IPs), in the
        order found, at most ``max_names``."""
        whitelist = [w.strip(".").lower() for w in self.config_list("uribl_whitelist_domains")]
        names = {}
        for line in self.lines(transaction):
            for host in hosts_in(line, self.check_ip):
                for name in self.names_for(host, whitelist):
                    if name in names:
                        continue
                    if len(names) >= self.max_names:
                        self.log(LOGINFO, f"stopped at {self.max_names} names")
                        return list(names)
                    names[name] = True
        return list(names)

    def names_for(self, host, whitelist):
        if host.isdigit() or _DOTTED.match(host):
            address = numeric_address(host)
            return [reverse_ip(address)] if address is not None else []
        host = host.strip(".-").lower()
        domain = _SUFFIXES.privatesuffix(host)
        if domain is None:
            return []
        if any(host == entry or host.endswith("." + entry) for entry in whitelist):
            self.log(LOGINFO, f"skip, whitelisted URI domain {host}")
            return []
        return [host] if host == domain else [host, domain]

    def lines(self, transaction):
        """The text to search, one decoded line at a time (QP soft breaks joined)."""
        if self.check_headers and transaction.header is not None:
            yield from _decode(transaction.header.as_string()).splitlines()
        pending = ""
        with transaction.body_fh() as stream:
            while True:
                raw = stream.readline(LINE_LIMIT)
                if not raw:
                    break
                text = raw.decode("latin-1").rstrip("\r\n")
                if text.endswith("=") and len(pending) + len(text) < LINE_LIMIT:
                    pending += text[:-1]
                    continue
                yield _decode(pending + text)
                pending = ""
        if pending:
            yield _decode(pending)

    def zones(self):
        lines = tuple(self.config_list("uribl_zones"))
        if lines != self._zones[0]:
            try:
                self._zones = (lines, parse_zones(lines, self.action))
            except PluginError as exc:
                self.log(LOGERROR, str(exc))
                self._zones = (lines, parse_zones(lines, self.action, strict=False))
        return self._zones[1]


def parse_zones(lines, default_action, strict=True):
    """``[(zone, mask, action)]``; a malformed line raises PluginError (or is
    skipped when not ``strict``)."""
    zones = []
    for line in lines:
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        zone = words[0].strip(".").lower()
        try:
            mask = parse_mask(words[1]) if len(words) > 1 else ALL_LISTS
            action = words[2].lower() if len(words) > 2 else default_action
            if action not in ACTIONS:
                raise ValueError(f"unknown action {words[2]}")
        except ValueError as exc:
            if strict:
                raise PluginError(f"uribl_zones: bad line {line!r}: {exc}") from None
            continue
        zones.append((zone, mask, action))
    return zones


def parse_mask(text):
    mask = 0
    for part in text.split(","):
        value = int(part, 0)
        mask |= value if value >= 0 else ALL_LISTS
    return mask


def listed(addresses, mask):
    for text in addresses:
        address = ip_address(text)
        if address is None or address not in _LISTED or address in _LIST_ERRORS:
            continue
        if int(address) & mask & ALL_LISTS:
            return True
    return False


def hosts_in(line, check_ip=True):
    """Host names and numeric hosts of the links in ``line``."""
    for match in _URL_HOST.finditer(line):
        host = match.group(1).rstrip(".-")
        if host.isdigit() or _DOTTED.match(host):
            if check_ip:
                yield host
        elif "." in host:
            yield host
    for match in _WWW_HOST.finditer(line):
        yield match.group(1).rstrip(".-")


def numeric_address(text):
    """An IPv4 address from ``3221225985``, ``0xc0.0.2.1``, ``0300.0.02.1``."""
    try:
        if text.isdigit():
            value = int(text)
            return str(ipaddress.IPv4Address(value)) if value < 2 ** 32 else None
        octets = [int(part, 16) if part[:2].lower() == "0x"
                  else int(part, 8) if len(part) > 1 and part.startswith("0")
                  else int(part) for part in text.split(".")]
        if all(0 <= octet <= 255 for octet in octets):
            return ".".join(str(octet) for octet in octets)
    except ValueError:
        pass
    return None


def _decode(text):
    text = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)
    text = _ENTITY.sub(lambda m: chr(int(m.group(1))), text)
    return text.replace(";", "")


def _true(value):
    return str(value or "").strip().lower() not in ("", "0", "no", "false", "off")
