"""sender_permitted_from - SPF (RFC 7208): may this client send mail for the sender?

At MAIL FROM the plugin evaluates the SPF policy of the envelope sender's
domain for the client's address, with pyspf; every DNS lookup goes through
the site's resolver (config/dns_servers) and the connection's DNS cache.
For the null sender ``<>`` (bounces) and a sender without a domain it
checks the HELO name instead: that is SPF's "helo" identity (RFC 7208 2.3,
2.4). The result

* decides the reply to MAIL, by the ``reject`` level (below);
* becomes a ``Received-SPF`` header at the top of the message (RFC 7208
  9.1) and an ``spf=`` part of the Authentication-Results header (RFC
  8601)::

    Received-SPF: pass (mx.example.org: domain of example.com designates
     192.0.2.10 as permitted sender) client-ip=192.0.2.10;
     envelope-from="alice@example.com"; helo=client.example.net;
     receiver=mx.example.org; mechanism="ip4:192.0.2.0/24"; identity=mailfrom
    Authentication-Results: mx.example.org; auth=none; spf=pass smtp.mailfrom=example.com

  (``smtp.helo=<name>`` and ``identity=helo`` for the helo identity);
* adjusts karma: pass +1, fail -1, softfail -1;
* is kept for other plugins in transaction notes: ``spfquery`` (an
  ``SPFResult``: result, why, domain, scope, explanation, mechanism),
  ``dmarc_spf`` (``{'domain', 'scope', 'result'}``, what ``dmarc`` aligns
  with) and, on a pass for the sender's domain, ``spf_pass_host``.

Reject levels (argument ``reject``, else ``config/spfbehavior``, else 0)::

  0  only annotate; every result is logged as tolerated
  1  annotate (Received-SPF and Authentication-Results), refuse nothing
  2  also defer (4xx) DNS errors, and defer "fail"
  3  refuse "fail", defer "softfail"
  4  also refuse "softfail"; defer "permerror"
  5  also refuse "neutral"
  6  also refuse "none" and "permerror"

Replies (``550 5.7.1``/``450 4.7.1`` after EHLO)::

  result     reply                           from level
  fail       450 SPF - fail: <why>           2
             550 SPF - forgery: <why>        3
  softfail   450 SPF - fail: <why>           3
             550 SPF - fail: <why>           4
  neutral    550 SPF - neutral: <why>        5
  none       550 SPF - none: <why>           6
  permerror  450 SPF - permerror: <why>      4
             550 SPF - permerror: <why>      6
  temperror  450 SPF - temperror: <why>      2

``<why>`` is the domain's own explanation (its ``exp=`` text) for a fail
when it publishes one, else a description such as ``domain of example.com
does not designate 192.0.2.10 as permitted sender``.

DNS: the whole check - the policy, its includes, redirects, a, mx and ptr
lookups - takes at most one DNS timeout in all (the ``timeout`` argument,
else config/dns_timeout); a lookup that times out or gets SERVFAIL makes
the result ``temperror``. RFC 7208's limits apply (10 lookups, 2 void
lookups).

Skipped: relay clients (the dkim plugin signs their mail instead) and
whitelisted hosts and senders (``is_immune``); no result is recorded for
them.

Arguments:

  reject 0..6          the level above (default: config/spfbehavior, else 0)
  spf_deny 1|2         the old spelling of reject 3 and reject 4
  no_dmarc_policy 0..4 refuse at the end of DATA (``552 SPF - <result>:
                       <why>``) when the dmarc plugin found no DMARC policy
                       for the From domain: 1 a fail, 2 also softfail, 3
                       also neutral, 4 also none, permerror and temperror.
                       Default 0 (off). Use with ``reject 1`` or ``2``, and
                       list dmarc after this plugin.
  timeout N            seconds for the whole SPF check (default: the
                       site's config/dns_timeout, 5)

Log lines (LOGINFO): ``pass, <why>``, ``fail, <why>``, ``fail, soft,
<why>``, ``fail, <result>, <why>``, ``fail, tolerated, ...``, ``skip,
tolerated (<result>: <why>)``, ``skip, tolerated, none, <why>``, ``skip,
...`` for skipped senders.

Differences from qpsmtpd 1.0, on purpose: the null sender is checked with
the HELO identity (the original skipped bounces); karma is adjusted at
every level (the original only with a reject level set); whitelisted hosts
and senders get no made-up "pass" for dmarc; a temporary DNS error at
level 1 is logged once; the A-R part uses ``smtp.helo`` for the helo
identity.

Example ``config/plugins`` line::

  sender_permitted_from reject 3
"""

import threading
import time
from typing import NamedTuple

import spf

from qpsmtpd.constants import DECLINED, DENY, DENYSOFT, LOGDEBUG, LOGERROR
from qpsmtpd.dns import connection_cache, ip_address
from qpsmtpd.plugin import Plugin, PluginError

MAX_EXPLANATION = 200


class SPFResult(NamedTuple):
    """One SPF evaluation, kept in the transaction note ``spfquery``."""

    result: str            # pass fail softfail neutral none permerror temperror
    why: str               # the description used in logs and the header comment
    domain: str            # the domain whose policy was evaluated
    scope: str             # "mfrom" or "helo"
    sender: str            # the MAIL FROM address (empty for the helo identity)
    explanation: str = ""  # the domain's exp= text, for a fail
    mechanism: str = ""    # the mechanism that matched
    problem: str = ""      # what went wrong, for permerror and temperror

    @property
    def reply_text(self):
        return self.explanation or self.why


class SenderPermittedFrom(Plugin):
    def register(self, *args):
        self.args = self.parse_args(args)
        deny = self.args.get("spf_deny")
        if deny in ("1", "2"):
            self.args["reject"] = "3" if deny == "1" else "4"
        reject = self.args.get("reject")
        if reject in (None, "", "0"):
            reject = self.config("spfbehavior") or "0"
        self.reject = _level(reject, 6, "reject")
        self.no_dmarc_policy = _level(self.args.get("no_dmarc_policy", "0"), 4,
                                      "no_dmarc_policy")
        if self.args.get("timeout"):
            self.dns_timeout = float(self.args["timeout"])
        if self.no_dmarc_policy:
            self.register_hook("data_post", self.no_dmarc_policy_check)

    # -- MAIL ------------------------------------------------------------------

    def hook_mail(self, session, sender, params):
        if self.is_immune(session):
            return DECLINED
        connection = session.connection
        client = ip_address(connection.remote_ip)
        if client is None:
            self.log_skip(f"no client address ({connection.remote_ip!r})")
            return DECLINED
        helo = (connection.hello_host or "").strip()
        if sender.host and not sender.is_null():
            scope, domain = "mfrom", sender.host
            address = f"{sender.user or 'postmaster'}@{sender.host}"
        else:
            scope, domain, address = "helo", helo, ""
        result = self.check(session, str(client), scope, domain, address, helo)
        if result is None:
            return DECLINED
        self.record(session, result)
        return self.verdict(result)

    def check(self, session, ip, scope, domain, address, helo):
        """Evaluate SPF; an ``SPFResult``, or None when pyspf failed."""
        name = spf_domain(domain)
        if name is None:
            why = (f"{domain} is not a domain name" if domain
                   else "no domain to check (null sender without a HELO name)")
            return SPFResult("none", why, domain, scope, address)
        lookups = _Lookups(self, session)
        query = spf.query(ip, address, helo or name, receiver=session.me,
                          timeout=lookups.timeout)
        _current.lookups = lookups
        try:
            result, _code, text = query.check()
        except Exception as exc:   # a pyspf defect must not fail the MAIL
            self.log_error(f"SPF check of {name} failed: {exc!r}")
            return None
        finally:
            _current.lookups = None
        if result not in _DESCRIPTIONS:
            result = "permerror"
        problem = _printable(getattr(query, "prob", "") or "") if result in (
            "permerror", "temperror") else ""
        why = _DESCRIPTIONS[result].format(domain=name, ip=ip, problem=problem)
        explanation = ""
        if result == "fail" and text and text != spf.EXPLANATIONS["fail"]:
            explanation = _printable(text)[:MAX_EXPLANATION]
        return SPFResult(result, why, name, scope, address, explanation,
                         query.mechanism or "", problem)

    def record(self, session, result):
        """Notes, karma and the Authentication-Results part of one result."""
        notes = session.transaction.notes
        notes["spfquery"] = result
        notes["dmarc_spf"] = {"domain": result.domain, "scope": result.scope,
                              "result": result.result}
        if result.result == "pass":
            if result.scope == "mfrom":
                notes["spf_pass_host"] = result.domain
            self.adjust_karma(session, 1)
        elif result.result in ("fail", "softfail"):
            self.adjust_karma(session, -1)
        part = f"spf={result.result}"
        if spf_domain(result.domain):    # not for "" or an address literal
            kind = "smtp.mailfrom" if result.scope == "mfrom" else "smtp.helo"
            part += f" {kind}={result.domain}"
        self.store_auth_results(session, part)

    def verdict(self, result):
        """The MAIL result for ``result`` at this plugin's level; logs it."""
        level, code, why = self.reject, result.result, result.why
        reply = result.reply_text
        if code == "pass":
            self.log_pass(why)
            return DECLINED
        if level == 0:
            self.log_skip(f"tolerated ({code}: {why})")
            return DECLINED
        if code == "fail":
            if level >= 2:
                self.log_fail(why)
                if level >= 3:
                    return DENY, f"SPF - forgery: {reply}"
                return DENYSOFT, f"SPF - fail: {reply}"
            self.log_fail(f"tolerated, {why}")
            return DECLINED
        if code == "softfail":
            if level >= 3:
                self.log_fail(f"soft, {why}")
                return (DENY if level >= 4 else DENYSOFT), f"SPF - fail: {why}"
            self.log_fail(f"tolerated, soft, {why}")
            return DECLINED
        if code == "none":
            if level >= 6:
                self.log_fail(f"none, {why}")
                return DENY, f"SPF - none: {why}"
            self.log_skip(f"tolerated, none, {why}")
            return DECLINED
        refuse_from, defer_from = {"neutral": (5, 7), "permerror": (6, 4),
                                   "temperror": (7, 2)}[code]
        if level >= refuse_from:
            self.log_fail(f"{code}, {why}")
            return DENY, f"SPF - {code}: {why}"
        if level >= defer_from:
            self.log_fail(f"{code}, {why}")
            return DENYSOFT, f"SPF - {code}: {why}"
        self.log_fail(f"tolerated, {code}, {why}")
        return DECLINED

    # -- end of DATA -------------------------------------------------------------

    def hook_data_post_headers(self, session):
        result = session.transaction.notes.get("spfquery")
        if not isinstance(result, SPFResult):
            return DECLINED
        header = session.transaction.header
        if header is None:
            self.log(LOGERROR, "missing headers!")
            return DECLINED
        header.add("Received-SPF", received_spf(result, session), 0)
        self.log(LOGDEBUG, f"result was {result.result}")
        return DECLINED

    def no_dmarc_policy_check(self, session):
        """data_post, with ``no_dmarc_policy``: a second chance to refuse
        when the dmarc plugin found no policy."""
        notes = session.transaction.notes
        result, dmarc = notes.get("spfquery"), notes.get("dmarc_result")
        if not isinstance(result, SPFResult) or not isinstance(dmarc, dict):
            return DECLINED
        if dmarc.get("result") != "none" or dmarc.get("policy") is not None:
            return DECLINED
        needed = {"fail": 1, "softfail": 2, "neutral": 3, "none": 4,
                  "permerror": 4, "temperror": 4}.get(result.result)
        if needed is None or self.no_dmarc_policy < needed:
            self.log_pass(f"no DMARC policy, SPF {result.result} tolerated")
            return DECLINED
        self.log_fail(f"no DMARC policy, {result.result}, {result.why}")
        return DENY, f"SPF - {result.result}: {result.reply_text}"


# -- pyspf's DNS through our resolver -------------------------------------------------
#
# pyspf asks a module function, spf.DNSLookup(name, qtype, strict, timeout).
# It is replaced, once per process, by a dispatcher that uses the lookups of
# the check running in this thread, and pyspf's own function otherwise. The
# thread-local is kept on the spf module: this file is imported again for
# every App (a reload), and every copy must share it.

def _install():
    current = getattr(spf, "_qpsmtpd_lookups", None)
    if current is None:
        current = threading.local()
        original = spf.DNSLookup

        def dispatch(name, qtype, strict=True, timeout=20):
            lookups = getattr(current, "lookups", None)
            if lookups is None:
                return original(name, qtype, strict, timeout)
            return lookups(name, qtype)

        spf._qpsmtpd_lookups = current
        spf.DNSLookup = dispatch
    return current


_current = _install()


class _Lookups:
    """pyspf's DNS function for one check: the plugin's resolver, the
    connection's cache, and one deadline for every lookup together."""

    def __init__(self, plugin, session):
        self.resolver = plugin.resolver
        self.cache = connection_cache(session.connection)
        self.timeout = plugin.dns_timeout or self.resolver.timeout
        self.deadline = time.monotonic() + self.timeout

    def __call__(self, name, qtype):
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise spf.TempError(f"DNS timeout looking up {name} {qtype}")
        answer = self.resolver.lookup(name, qtype, self.cache, left)
        if answer.temporary:
            raise spf.TempError(f"DNS {answer.reason} looking up {name} {qtype}")
        key = (name, qtype)
        if qtype == "MX":    # pyspf sorts (preference, exchange); ours come sorted
            return [(key, (rank, exchange)) for rank, exchange in enumerate(answer)]
        if qtype in ("TXT", "SPF"):
            return [(key, [text.encode("utf-8")]) for text in answer]
        return [(key, record) for record in answer]


# -- helpers -----------------------------------------------------------------------------

_DESCRIPTIONS = {
    "pass": "domain of {domain} designates {ip} as permitted sender",
    "fail": "domain of {domain} does not designate {ip} as permitted sender",
    "softfail": "domain of transitioning {domain} does not designate {ip} "
                "as permitted sender",
    "neutral": "{ip} is neither permitted nor denied by domain of {domain}",
    "none": "domain of {domain} does not designate permitted sender hosts",
    "permerror": "permanent error in processing domain of {domain}: {problem}",
    "temperror": "temporary error in processing domain of {domain}: {problem}",
}


def spf_domain(name):
    """``name`` lower-cased without a final dot, or None when SPF cannot
    evaluate it (RFC 7208 4.3: not a domain of two or more labels)."""
    name = (name or "").strip().rstrip(".").lower()
    labels = name.split(".")
    if len(labels) < 2 or len(name) > 253 or "[" in name:
        return None
    if any(not 0 < len(label) < 64 or " " in label for label in labels):
        return None
    return name


def received_spf(result, session):
    """The value of the Received-SPF header (RFC 7208 9.1), folded."""
    connection = session.connection
    words = f"{result.result} ({session.me}: {result.why})".split(" ")
    pairs = [("client-ip", str(ip_address(connection.remote_ip)))]
    if result.scope == "mfrom":
        pairs.append(("envelope-from", result.sender))
    if connection.hello_host:
        pairs.append(("helo", connection.hello_host))
    if result.problem:
        pairs.append(("problem", result.problem))
    pairs.append(("receiver", session.me))
    if result.mechanism:
        pairs.append(("mechanism", result.mechanism))
    words += [f"{key}={spf.quote_value(value)};" for key, value in pairs]
    words.append(f"identity={result.scope if result.scope == 'helo' else 'mailfrom'}")
    return fold(words, len("Received-SPF: "))


def fold(words, used, width=78):
    """Join ``words`` with spaces, breaking lines before ``width`` columns;
    continuation lines start with one space."""
    lines, line = [], ""
    for word in words:
        if line and used + len(line) + 1 + len(word) > width:
            lines.append(line)
            line, used = word, 1
        else:
            line = f"{line} {word}" if line else word
    lines.append(line)
    return "\n ".join(lines)


def _printable(text):
    """``text`` as one line of printable ASCII (DNS data goes into replies)."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    return "".join(ch if " " <= ch <= "~" else "?" for ch in str(text)).strip()


def _level(value, highest, name):
    text = str(value).strip()
    if not text.isdigit() or int(text) > highest:
        raise PluginError(f"sender_permitted_from: {name} must be 0..{highest}, "
                          f"not {value!r}")
    return int(text)
