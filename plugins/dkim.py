"""dkim - verify DKIM signatures (RFC 6376) of incoming mail; sign relay clients' mail.

Verifying (clients that are not relay clients; whitelisted hosts and
senders are skipped, ``is_immune``): as soon as the header
of a message has arrived, the public keys its ``DKIM-Signature`` fields
name (``<s>._domainkey.<d>`` TXT) are looked up in the background, all at
once, through the site's resolver, while the body is still coming in.
After the final dot dkimpy checks each signature (the first five, from the
top) with those keys, against the header as it arrived (fields our plugins
add, such as Received-SPF, cannot break a signature). The outcome:

* an Authentication-Results part per signature (RFC 8601), e.g.::

    Authentication-Results: mx.example.org; auth=none;
        dkim=pass header.i=@example.com header.s=may2026

  (on one line) with ``dkim=fail (body hash mismatch)``, ``dkim=fail
  (signature did not verify)``, ``dkim=permerror (no key for signature)``,
  ``dkim=permerror (...)`` for malformed signatures and bad keys,
  ``dkim=temperror (key lookup failed: timeout)``; ``dkim=none`` when the
  message has no signature, ``dkim=none (message too large)`` above
  ``max_size``;
* on a pass, ``X-DKIM-Authentication: domain: <d>, selector: <s>, result:
  pass`` at the top of the header;
* karma: +1 when a signature passes, -1 when all failed (fail or
  permerror);
* transaction notes for dmarc and other plugins: ``dkim_result`` (the
  overall result: pass if one signature passed, else temperror, fail,
  permerror, none), ``dkim_pass_domains`` (the ``d=`` domains of the passing
  signatures, lower case), ``dkim_verifier`` (a ``Signature`` per checked
  signature: result, domain, selector, identity, reason).

Refusing is off by default: a broken signature alone says little (mailing
lists break them; dmarc decides with the sender's policy). ``reject 1``
refuses at the end of DATA a message whose signatures all fail::

  552 DKIM signature invalid: body hash mismatch      (552 5.7.1 after EHLO)
  452 Please try again later - key lookup failed: timeout

DNS: the key lookups of a message together take at most one DNS timeout,
counted from the end of its header; a lookup that times out or gets
SERVFAIL makes that signature ``temperror``.

Messages larger than ``max_size`` are not verified (LOGINFO ``skip,
message too large ...``): dkimpy needs the whole message in memory, and
canonicalizing it costs about 3.6 times its size for a moment (a 4.9 MB
message: 18 MB and 0.4 s).

Signing (relay clients: authenticated users, relayclients): the message is
signed for the domain of its From: address (RFC 5322.From, what DMARC
aligns with), else for the envelope sender's domain, when a key is
configured. Keys live in ``config/dkim/<domain>/`` (under any config
directory):

  selector   one line: the selector (a DNS label, e.g. ``may2026``)
  private    the RSA private key, PEM (PKCS#1 or PKCS#8); mode 0400,
             readable by the user the daemon runs as

``config/dkim/<parent domain>/`` signs for its subdomains
(``mail.example.org`` with the key of ``example.org``; the nearest parent
wins). A symlink ``config/dkim/client.example -> example.org`` signs
client.example's mail with example.org's key and ``d=example.org``. The
signature is rsa-sha256, relaxed/relaxed, over the header fields RFC 6376
recommends (From twice), and is added at the top of the header. The
message goes out unsigned, with a log line, when no key is configured
(``skip, DKIM not configured for <domain>``), the key cannot be read or
used (``error, ...``), or the message is larger than ``sign_max_size``.

Making a key (writes selector, private, public and dns; prints the DNS
record to publish)::

  plugins/dkim_key_gen example.org
  plugins/dkim_key_gen --selector may2026 --bits 2048 --user smtpd example.org

Arguments:

  reject 0|1|naughty   0 (default) only annotate; 1 refuse at data_post as
                       above; naughty defer the refusal to ``naughty``
  reject_type perm|temp|...   how a failed signature is refused (perm)
  max_size N           bytes; larger messages are not verified (5000000)
  sign_max_size N      bytes; larger messages are not signed (10000000)
  key_dir DIR          where the per-domain key directories are (default:
                       ``dkim`` in each config directory)
  timeout N            seconds for the key lookups (default: the site's
                       config/dns_timeout, 5)

Log lines (LOGINFO): ``pass, valid signature (domain: <d>, selector:
<s>)``, ``fail, <reason> (domain: ..., selector: ...)`` (``fail,
tolerated, ...``), ``fail, tolerated, temperror, ...``, ``skip, no
signature``, ``pass, we signed the message (d=<d>, s=<s>)``.

Differences from qpsmtpd 1.0, on purpose: ``reject`` works (at data_post;
the original's was inert); the results are RFC 8601's (``permerror`` for
Mail::DKIM's ``invalid``), one A-R part per signature with the selector;
ADSP policies are gone (the RFC was retired), so there is no "sign-all
policy" rejection; the notes are per message (the original kept
``dkim_pass_domains`` on the connection, so a second message inherited the
first one's domains); signing uses the From: domain first and the nearest
parent key; keys are found in the config directories, not only
``./config``.

Example ``config/plugins`` line::

  dkim reject 0
"""

import os
import re
from email.utils import getaddresses
from typing import NamedTuple

import dkim
from dkim.util import InvalidTagValueList, parse_tag_value

from qpsmtpd.constants import DECLINED, DENYSOFT, LOGDEBUG, LOGINFO
from qpsmtpd.plugin import Plugin, PluginError

MAX_SIGNATURES = 5
DEFAULT_MAX_SIZE = 5_000_000
DEFAULT_SIGN_MAX_SIZE = 10_000_000
_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.@]+\Z")
_SELECTOR = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})"
                       r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62}))*\Z")
_DOMAIN = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,62})(?:\.[a-z0-9_](?:[a-z0-9_-]{0,62}))+\Z")


class Signature(NamedTuple):
    """The verdict on one DKIM-Signature field."""

    result: str        # pass fail permerror temperror
    domain: str        # d=
    selector: str      # s=
    identity: str      # i= (default @d)
    reason: str = ""

    def auth_result(self):
        """This signature's Authentication-Results part."""
        text = f"dkim={self.result}"
        if self.reason:
            text += f" ({self.reason})"
        if _TOKEN.match(self.identity or ""):
            text += f" header.i={self.identity}"
        if _TOKEN.match(self.selector or ""):
            text += f" header.s={self.selector}"
        return text

    def details(self):
        return f"domain: {self.domain or '?'}, selector: {self.selector or '?'}"


class Dkim(Plugin):
    def register(self, *args):
        self.args = self.parse_args(args, {"reject": "0", "reject_type": "perm"})
        if str(self.args["reject"]).lower() not in ("0", "1", "naughty"):
            raise PluginError(f"dkim: reject must be 0, 1 or naughty, "
                              f"not {self.args['reject']!r}")
        self.max_size = _size(self.args.get("max_size"), DEFAULT_MAX_SIZE, "max_size")
        self.sign_max_size = _size(self.args.get("sign_max_size"),
                                   DEFAULT_SIGN_MAX_SIZE, "sign_max_size")
        if self.args.get("timeout"):
            self.dns_timeout = float(self.args["timeout"])

    # -- header complete: start the key lookups -------------------------------------

    def hook_data_headers_end(self, session):
        if session.connection.relay_client:
            return DECLINED
        transaction = session.transaction
        fields = signature_fields(transaction.header)
        if not fields:
            return DECLINED
        # what the sender signed: the header before our plugins add fields
        transaction.notes["dkim_received_header"] = transaction.header.as_bytes()
        names = key_names(fields)
        if names:
            transaction.notes["dkim_key_lookups"] = self.resolve_later(
                session, [(name, "TXT") for name in names])
        return DECLINED

    # -- after the final dot ---------------------------------------------------------

    def hook_data_post_headers(self, session):
        if session.connection.relay_client:
            return self.sign(session)
        if self.is_immune(session):
            return DECLINED
        return self.verify(session)

    def hook_data_post(self, session):
        return session.transaction.notes.pop("dkim_reject", None) or DECLINED

    # -- verifying ------------------------------------------------------------------

    def verify(self, session):
        transaction = session.transaction
        notes = transaction.notes
        fields = signature_fields(transaction.header)
        pending = notes.pop("dkim_key_lookups", None)
        if not fields:
            self.log_skip("no signature")
            return self.conclude(session, "none", [], "dkim=none")
        if len(fields) > MAX_SIGNATURES:
            self.log(LOGINFO, f"checking the first {MAX_SIGNATURES} of "
                              f"{len(fields)} signatures")
            fields = fields[:MAX_SIGNATURES]
        size = transaction.message_size()
        if size > self.max_size:
            self.log_skip(f"message too large ({size} bytes, max_size {self.max_size})")
            return self.conclude(session, "none", [], "dkim=none (message too large)")
        if pending is not None:
            pending.wait()
        names = key_names(fields)
        if names:   # answers are in the connection's cache by now; this asks the rest
            self.resolve_many(session, [(name, "TXT") for name in names])
        message = message_bytes(transaction, notes.pop("dkim_received_header", None))
        results = self.check_signatures(session, message, fields)
        for signature in results:
            self.log(LOGDEBUG, f"{signature.result}, {signature.reason or 'ok'}, "
                               f"{signature.details()}")
        order = ("pass", "temperror", "fail", "permerror")
        overall = min((s.result for s in results), key=order.index)
        return self.conclude(session, overall, results,
                             *[s.auth_result() for s in results])

    def check_signatures(self, session, message, fields):
        """A ``Signature`` for each of ``fields`` (the first ones of the message)."""
        try:
            verifier = dkim.DKIM(message, logger=_Reasons(), minkey=1024)
        except dkim.DKIMException as exc:
            reason = f"message not parseable: {_short(exc)}"
            return [Signature("permerror", *tags, reason) for tags, _error in
                    (_identify(field) for field in fields)]
        return [self.check_one(session, verifier, index, field)
                for index, field in enumerate(fields)]

    def check_one(self, session, verifier, index, field):
        tags, error = _identify(field)
        if error:
            return Signature("permerror", *tags, f"malformed signature: {error}")
        keys = _KeyLookup(self, session)
        verifier.logger = reasons = _Reasons()
        try:
            valid = verifier.verify(index, dnsfunc=keys)
        except dkim.ValidationError as exc:
            if str(exc).startswith("body hash mismatch"):
                return Signature("fail", *tags, "body hash mismatch")
            return Signature("permerror", *tags, f"invalid signature: {_short(exc)}")
        except dkim.DKIMException as exc:
            return Signature("permerror", *tags, _short(exc))
        except Exception as exc:   # dkimpy on input it did not expect
            self.log_error(f"verifying signature {index + 1} failed: {exc!r}")
            return Signature("permerror", *tags, "verification failed")
        if valid:
            return Signature("pass", *tags)
        if keys.temporary:
            return Signature("temperror", *tags, f"key lookup failed: {keys.temporary}")
        if keys.missing:
            return Signature("permerror", *tags, "no key for signature")
        if reasons.errors:
            return Signature("permerror", *tags, f"bad key: {_short(reasons.errors[0])}")
        return Signature("fail", *tags, "signature did not verify")

    def conclude(self, session, overall, results, *auth_results):
        """Notes, karma, A-R parts, header and log line for ``overall``."""
        transaction = session.transaction
        notes = transaction.notes
        passed = [s for s in results if s.result == "pass"]
        notes["dkim_result"] = overall
        notes["dkim_verifier"] = results
        notes["dkim_pass_domains"] = list(dict.fromkeys(s.domain.lower() for s in passed))
        for part in auth_results:
            self.store_auth_results(session, part)
        if overall == "pass":
            first = passed[0]
            transaction.header.add("X-DKIM-Authentication",
                                   f"{first.details()}, result: pass", 0)
            self.adjust_karma(session, 1)
            self.log_pass(f"valid signature ({first.details()})")
        elif overall in ("fail", "permerror"):
            self.adjust_karma(session, -1)
            first = next(s for s in results if s.result == overall)
            verdict = self.get_reject(session, f"DKIM signature invalid: {first.reason}",
                                      f"{first.reason} ({first.details()})")
            if verdict != DECLINED:
                notes["dkim_reject"] = verdict
        elif overall == "temperror":
            first = next(s for s in results if s.result == "temperror")
            if str(self.args.get("reject")) == "1":
                self.log_fail(f"temperror, {first.reason} ({first.details()})")
                notes["dkim_reject"] = (DENYSOFT,
                                        f"Please try again later - {first.reason}")
            else:
                self.log_fail(f"tolerated, temperror, {first.reason} ({first.details()})")
        return DECLINED

    # -- signing ----------------------------------------------------------------------

    def sign(self, session):
        transaction = session.transaction
        header = transaction.header
        if header is None or "From" not in header:
            self.log_skip("no From header, message not signed")
            return DECLINED
        domains = [d for d in (author_domain(header), _sender_domain(transaction)) if d]
        if not domains:
            self.log_skip("no domain to sign for")
            return DECLINED
        found = None
        for domain in dict.fromkeys(domains):
            found = self.find_key(domain)
            if found:
                break
        if not found:
            self.log_skip(f"DKIM not configured for {domains[0]}")
            return DECLINED
        signing_domain, directory = found
        try:
            with open(os.path.join(directory, "selector")) as handle:
                selector = handle.readline().strip()
        except OSError as exc:
            self.log_error(f"unable to read selector from {directory}/selector: "
                           f"{exc.strerror}")
            return DECLINED
        if not _SELECTOR.match(selector):
            self.log_error(f"invalid selector {selector!r} in {directory}/selector")
            return DECLINED
        try:
            with open(os.path.join(directory, "private"), "rb") as handle:
                private_key = handle.read()
        except OSError as exc:
            self.log_error(f"unable to read dkim key from {directory}/private: "
                           f"{exc.strerror}")
            return DECLINED
        size = transaction.message_size()
        if size > self.sign_max_size:
            self.log_skip(f"message too large to sign ({size} bytes, "
                          f"sign_max_size {self.sign_max_size})")
            return DECLINED
        try:
            signature = dkim.sign(message_bytes(transaction), selector.encode("ascii"),
                                  signing_domain.encode("ascii"), private_key,
                                  canonicalize=(b"relaxed", b"relaxed"),
                                  logger=_Reasons())
        except (dkim.DKIMException, UnicodeError, ValueError) as exc:
            self.log_error(f"cannot sign for {signing_domain} with {directory}: "
                           f"{_short(exc)}")
            return DECLINED
        value = signature.decode("ascii").split(":", 1)[1]
        header.add("DKIM-Signature", value.replace("\r\n", "\n").strip(), 0)
        self.log_pass(f"we signed the message (d={signing_domain}, s={selector})")
        return DECLINED

    def find_key(self, domain):
        """``(signing domain, key directory)`` for ``domain``, or None: its
        own directory, else the nearest parent's; a symlink names the
        signing domain by its target."""
        labels = domain.split(".")
        for start in range(0, len(labels) - 1):
            name = ".".join(labels[start:])
            for base in self.key_dirs():
                path = os.path.join(base, name)
                if not os.path.isdir(path):
                    continue
                if os.path.islink(path):
                    target = os.path.basename(os.path.realpath(path)).lower()
                    name = target if _DOMAIN.match(target) else name
                if start:
                    self.log(LOGINFO, f"info, using {name} key for {domain}")
                return name, path
        return None

    def key_dirs(self):
        if self.args.get("key_dir"):
            return [self.tildeexp(self.args["key_dir"])]
        return [os.path.join(directory, "dkim") for directory in self.app.config.dirs]


# -- helpers ---------------------------------------------------------------------------

class _KeyLookup:
    """dkimpy's ``dnsfunc``: the key record through the plugin's resolver
    and the connection's cache; remembers why a lookup gave nothing."""

    def __init__(self, plugin, session):
        self.plugin = plugin
        self.session = session
        self.temporary = None
        self.missing = False

    def __call__(self, name, timeout=None):
        if isinstance(name, bytes):
            name = name.decode("ascii", "replace")
        answer = self.plugin.resolve_txt(self.session, name.rstrip("."))
        if answer.temporary:
            self.temporary = answer.reason
            raise dkim.DnsTimeoutError(answer.reason)
        for text in answer:
            if "p=" in text:
                return text.encode("utf-8")
        if answer:
            return answer[0].encode("utf-8")
        self.missing = True
        return None


class _Reasons:
    """A logger for dkimpy that keeps its error lines instead of printing them."""

    def __init__(self):
        self.errors = []

    def isEnabledFor(self, level):
        return False

    def error(self, message, *args, **kwargs):
        self.errors.append(message % args if args else str(message))

    def debug(self, *args, **kwargs):
        pass

    info = warning = debug


def signature_fields(header):
    """The DKIM-Signature values of ``header``, top first."""
    return header.get_all("DKIM-Signature") if header is not None else []


def _identify(field):
    """``((domain, selector, identity), error)`` from a signature's tags."""
    try:
        tags = parse_tag_value(field.encode("utf-8", "surrogateescape"))
    except (InvalidTagValueList, ValueError) as exc:
        return ("", "", ""), _short(exc) or "unparseable tag list"

    def tag(name):
        return tags.get(name, b"").decode("utf-8", "replace").strip()

    domain, selector = tag(b"d"), tag(b"s")
    identity = re.sub(r"\s+", "", tag(b"i")) or (f"@{domain}" if domain else "")
    missing = [name for name in ("d", "s", "b", "bh", "h") if name.encode() not in tags]
    if missing:
        return (domain, selector, identity), f"missing {', '.join(missing)}="
    return (domain, selector, identity), None


def key_names(fields):
    """The key record names (``<s>._domainkey.<d>``) of well-formed signatures."""
    names = []
    for field in fields[:MAX_SIGNATURES]:
        (domain, selector, _identity), error = _identify(field)
        if not error and domain and selector:
            names.append(f"{selector}._domainkey.{domain}")
    return list(dict.fromkeys(names))


def message_bytes(transaction, header=None):
    """The message as queued (or with ``header``, bytes, in place of the
    current header), with CR LF line ends: what DKIM hashes."""
    chunks = transaction.message_chunks()
    if header is not None:
        next(chunks, None)
        chunks = [header, *chunks]
    return b"".join(chunks).replace(b"\n", b"\r\n")


def author_domain(header):
    """The domain of the first From: address (lower case), or None."""
    for _name, address in getaddresses(header.get_all("From")):
        domain = address.rpartition("@")[2].strip().rstrip(".").lower()
        if "@" in address and _DOMAIN.match(domain):
            return domain
    return None


def _sender_domain(transaction):
    sender = transaction.sender
    host = (getattr(sender, "host", None) or "").rstrip(".").lower()
    return host if _DOMAIN.match(host) else None


def _short(error, limit=120):
    """One safe line for a reply, a log line or an A-R comment."""
    text = "".join(ch if " " <= ch <= "~" and ch not in "()\\" else "?"
                   for ch in str(error)).strip()
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _size(value, default, name):
    if value is None:
        return default
    text = str(value).strip()
    if not text.isdigit():
        raise PluginError(f"dkim: {name} must be a number of bytes, not {value!r}")
    return int(text)
