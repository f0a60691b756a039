"""dmarc - DMARC (RFC 7489): apply the From: domain's policy to mail that fails SPF and DKIM.

A message passes DMARC when SPF passed for a domain aligned with the
domain of its From: address, or a DKIM signature of an aligned domain
verified. The plugin reads what ``sender_permitted_from`` and ``dkim``
found (transaction notes ``dmarc_spf`` and ``dkim_pass_domains``), so it
must be listed after both.

Policy discovery: as soon as the header has arrived, the TXT records of
``_dmarc.<From domain>`` and ``_dmarc.<organizational domain>`` are looked
up in the background, at once. The organizational domain comes from the
Public Suffix List (the publicsuffixlist package's copy, offline; a file
``config/public_suffix_list`` in the list's format replaces it): for
``mail.example.co.uk`` it is ``example.co.uk``. The From domain's own
record wins; without one the organizational domain's applies, with its
``sp=`` (else ``p=``) for subdomains. Tags used: ``p``, ``sp``, ``adkim``
and ``aspf`` (``r`` relaxed: same organizational domain; ``s`` strict:
the same name), ``pct``, ``rua``, ``ruf``. A record whose ``p=`` is not
valid counts as ``p=none`` if it has a reporting address, else as no
record; several records count as none (RFC 7489 6.6.3).

The outcome:

* an Authentication-Results part (RFC 8601)::

    dmarc=pass (p=reject) header.from=example.com
    dmarc=fail (p=reject) header.from=example.com
    dmarc=fail (p=reject dis=quarantine) header.from=example.com    (pct)
    dmarc=none header.from=example.com                  (no policy)
    dmarc=temperror header.from=example.com             (DNS failure)
    dmarc=permerror (no From domain)

* a message that fails where the policy is ``reject`` (karma -3, note
  ``reject_dmarc``) is refused at the end of DATA::

    552 failed DMARC policy              (552 5.7.1 after EHLO)

* ``quarantine`` (karma -3): the header ``X-DMARC-Quarantine: <domain>``
  is added at the top, for the delivery agent's filters; with
  ``quarantine reject`` such mail is refused like ``reject``;
* ``pct`` below 100: only that share of failing messages gets the
  policy; the others get the next milder one (reject -> quarantine ->
  none), shown as ``dis=``;
* the transaction note ``dmarc_result``: a dict with ``domain``,
  ``result`` (pass fail none temperror permerror), ``policy`` (the policy
  that applies, None without a record), ``disposition`` (none
  quarantine reject), ``reason``, ``org_domain``, ``pct``, ``rua``,
  ``ruf``, ``aligned`` (``spf``/``dkim``); sender_permitted_from's
  ``no_dmarc_policy`` reads it.

Reports: with ``reporting 1`` the policy's ``rua=`` and ``ruf=``
addresses are logged (LOGINFO ``reporting addresses for <domain>:
rua=..., ruf=..., no reports sent``) and kept in the note; the plugin
sends no aggregate or failure reports.

Skipped: relay clients (their mail is ours). Whitelisted hosts and
senders (``is_immune``) are evaluated and annotated but never refused.
A message with several From: domains is evaluated for each; the strictest
outcome counts. A message without a From: address gets only the
``permerror`` part. A DNS failure never refuses mail.

Arguments:

  reject 1|0|naughty   1 (default) refuse as above; 0 only annotate and
                       log ``fail, tolerated``; naughty defer to ``naughty``
  reject_type perm|temp|...   default perm (552)
  quarantine header|reject   what a quarantine disposition does (header)
  reporting 1|0        log the reporting addresses (1)
  timeout N            seconds for the policy lookups (default: the
                       site's config/dns_timeout, 5)

Log lines (LOGINFO): ``pass, <domain> aligned: spf, dkim``, ``fail,
<domain>, p=<policy>, not aligned``, ``fail, tolerated, <domain>, p=none,
not aligned``, ``fail, <domain>, p=reject, sampled out (pct=<n>),
quarantine``, ``skip, no policy for <domain>``, ``skip, DNS error looking
up the policy of <domain>: <why>``, ``skip, relay client``; at data_post
``fail, failed DMARC policy``.

Differences from qpsmtpd 1.0 (which used Mail::DMARC): no reports are
stored or sent; ``quarantine`` adds a header instead of refusing (unless
``quarantine reject``); the A-R part says ``header.from=<domain>`` (RFC
8601) instead of ``d=<domain>``, and is also written for ``dmarc=none``
and ``dmarc=temperror``; every From: domain is checked.

Example ``config/plugins`` line::

  dmarc reject 1 quarantine header
"""

import os
import random
from email.utils import getaddresses

from publicsuffixlist import PublicSuffixList

from qpsmtpd.constants import DECLINED, LOGINFO
from qpsmtpd.plugin import Plugin, PluginError

POLICIES = ("none", "quarantine", "reject")
MAX_AUTHOR_DOMAINS = 5


class Dmarc(Plugin):
    def register(self, *args):
        self.args = self.parse_args(args, {"reject": "1", "reject_type": "perm",
                                           "reporting": "1", "quarantine": "header"})
        if str(self.args["reject"]).lower() not in ("0", "1", "naughty"):
            raise PluginError(f"dmarc: reject must be 0, 1 or naughty, "
                              f"not {self.args['reject']!r}")
        if self.args["quarantine"] not in ("header", "reject"):
            raise PluginError(f"dmarc: quarantine must be header or reject, "
                              f"not {self.args['quarantine']!r}")
        self.reporting = self.args["reporting"] not in ("0", "")
        if self.args.get("timeout"):
            self.dns_timeout = float(self.args["timeout"])
        self.suffixes = self.load_suffixes()
        # pct sampling: a number in [0, 1); tests put a fixed source here
        self.sample = random.random

    def load_suffixes(self):
        path = self.app.config.path("public_suffix_list")
        if os.path.isfile(path):
            with open(path, "rb") as source:
                return PublicSuffixList(source)
        return PublicSuffixList()

    def organizational_domain(self, domain):
        return self.suffixes.privatesuffix(domain) or domain

    # -- header complete: start the policy lookups -----------------------------------

    def hook_data_headers_end(self, session):
        if session.connection.relay_client:
            return DECLINED
        names = [name for domain in author_domains(session.transaction.header)
                 for name in self.policy_names(domain)]
        if names:
            session.transaction.notes["dmarc_lookups"] = self.resolve_later(
                session, [(name, "TXT") for name in dict.fromkeys(names)])
        return DECLINED

    def policy_names(self, domain):
        organizational = self.organizational_domain(domain)
        names = [f"_dmarc.{domain}"]
        if organizational != domain:
            names.append(f"_dmarc.{organizational}")
        return names

    # -- evaluate ---------------------------------------------------------------------

    def hook_data_post_headers(self, session):
        transaction = session.transaction
        pending = transaction.notes.pop("dmarc_lookups", None)
        if session.connection.relay_client:
            self.log_skip("relay client")
            return DECLINED
        domains = author_domains(transaction.header)
        if not domains:
            transaction.notes["dmarc_result"] = _result("", "permerror",
                                                        reason="no From domain")
            self.store_auth_results(session, "dmarc=permerror (no From domain)")
            self.log_skip("no From domain")
            return DECLINED
        if pending is not None:
            pending.wait()
        names = [name for domain in domains for name in self.policy_names(domain)]
        answers = dict(zip(names, self.resolve_many(
            session, [(name, "TXT") for name in names])))
        results = [self.evaluate(session, domain, answers) for domain in domains]
        decisive = max(results, key=lambda r: (POLICIES.index(r["disposition"]),
                                               r["result"] == "fail"))
        transaction.notes["dmarc_result"] = decisive
        if decisive["disposition"] in ("reject", "quarantine") and \
                not self.is_immune(session):
            self.adjust_karma(session, -3)
            if decisive["disposition"] == "reject" or self.args["quarantine"] == "reject":
                transaction.notes["reject_dmarc"] = "1"
            else:
                transaction.header.add("X-DMARC-Quarantine", decisive["domain"], 0)
        return DECLINED

    def evaluate(self, session, domain, answers):
        """The DMARC result for one From: domain (a dict, see the manual)."""
        organizational = self.organizational_domain(domain)
        record, found_at, error = None, None, None
        for name in self.policy_names(domain):
            answer = answers[name]
            if answer.temporary:
                error = answer.reason
                break
            records = [text for text in answer if _is_dmarc(text)]
            if len(records) > 1:
                self.log(LOGINFO, f"{name} has {len(records)} DMARC records, ignored")
                break
            if records:
                record, found_at = records[0], name[len("_dmarc."):]
                break
        if error is not None:
            self.log_skip(f"DNS error looking up the policy of {domain}: {error}")
            self.store_auth_results(session, f"dmarc=temperror header.from={domain}")
            return _result(domain, "temperror", organizational, reason=error)
        policy = parse_policy(record) if record else None
        if policy is None:
            self.log_skip(f"no policy for {domain}")
            self.store_auth_results(session, f"dmarc=none header.from={domain}")
            return _result(domain, "none", organizational, reason="no policy")
        applied = policy["p"]
        if found_at != domain and policy.get("sp"):
            applied = policy["sp"]
        if self.reporting and (policy["rua"] or policy["ruf"]):
            self.log(LOGINFO, f"reporting addresses for {domain}: "
                              f"rua={','.join(policy['rua']) or '-'}, "
                              f"ruf={','.join(policy['ruf']) or '-'}, no reports sent")
        aligned = self.alignment(session, domain, organizational, policy)
        result = _result(domain, "pass" if aligned else "fail", organizational,
                         policy=applied, pct=policy["pct"], rua=policy["rua"],
                         ruf=policy["ruf"], aligned=aligned, record_domain=found_at)
        comment = f"p={applied}"
        if aligned:
            self.log_pass(f"{domain} aligned: {', '.join(aligned)}")
        else:
            disposition = applied
            if applied != "none" and policy["pct"] < 100 and \
                    self.sample() * 100 >= policy["pct"]:
                disposition = POLICIES[POLICIES.index(applied) - 1]
                self.log_fail(f"{domain}, p={applied}, sampled out (pct={policy['pct']}), "
                              f"{disposition}")
                comment += f" dis={disposition}"
            elif disposition == "none":
                self.log_fail(f"tolerated, {domain}, p=none, not aligned")
            else:
                self.log_fail(f"{domain}, p={applied}, not aligned")
            result["disposition"] = disposition
            result["reason"] = "not aligned"
        self.store_auth_results(session, f"dmarc={result['result']} ({comment}) "
                                         f"header.from={domain}")
        return result

    def alignment(self, session, domain, organizational, policy):
        """Which of ``spf``/``dkim`` gave a pass aligned with ``domain``."""
        notes = session.transaction.notes
        aligned = []
        spf = notes.get("dmarc_spf") or {}
        if spf.get("result") == "pass" and self.aligned(
                spf.get("domain"), domain, organizational, policy["aspf"]):
            aligned.append("spf")
        if any(self.aligned(d, domain, organizational, policy["adkim"])
               for d in notes.get("dkim_pass_domains") or ()):
            aligned.append("dkim")
        return aligned

    def aligned(self, authenticated, domain, organizational, mode):
        authenticated = (authenticated or "").strip().rstrip(".").lower()
        if not authenticated:
            return False
        if mode == "s":
            return authenticated == domain
        return self.organizational_domain(authenticated) == organizational

    # -- refuse --------------------------------------------------------------------------

    def hook_data_post(self, session):
        if session.transaction.notes.get("reject_dmarc"):
            return self.get_reject(session, "failed DMARC policy")
        return DECLINED


# -- helpers -----------------------------------------------------------------------------

def author_domains(header):
    """The distinct domains of the From: addresses (lower case), at most five."""
    if header is None:
        return []
    domains = []
    for _name, address in getaddresses(header.get_all("From")):
        user, at, domain = address.rpartition("@")
        domain = domain.strip().rstrip(".").lower()
        if at and user and _is_domain(domain) and domain not in domains:
            domains.append(domain)
    return domains[:MAX_AUTHOR_DOMAINS]


def parse_policy(text):
    """The tags of a DMARC record as a dict, or None when it gives no policy.

    ``p``/``sp`` are validated (an invalid ``p`` with a reporting address
    becomes ``none``); ``adkim``/``aspf`` default to ``r``, ``pct`` to 100;
    ``rua``/``ruf`` are lists of URIs.
    """
    tags = {}
    for part in text.split(";"):
        key, sep, value = part.partition("=")
        if sep:
            tags.setdefault(key.strip().lower(), value.strip())
    rua = _uris(tags.get("rua", ""))
    ruf = _uris(tags.get("ruf", ""))
    p = tags.get("p", "").lower()
    sp = tags.get("sp", "").lower()
    if p not in POLICIES or (sp and sp not in POLICIES):
        if not rua:
            return None
        p, sp = "none", ""
    try:
        pct = int(tags.get("pct", "100"))
    except ValueError:
        pct = 100
    if not 0 <= pct <= 100:
        pct = 100
    return {"p": p, "sp": sp, "pct": pct, "rua": rua, "ruf": ruf,
            "adkim": "s" if tags.get("adkim", "").lower() == "s" else "r",
            "aspf": "s" if tags.get("aspf", "").lower() == "s" else "r"}


def _is_dmarc(text):
    version, sep, _rest = text.partition(";")
    key, eq, value = version.partition("=")
    return bool(eq) and key.strip() == "v" and value.strip().upper() == "DMARC1"


def _uris(value):
    return [uri.strip() for uri in value.split(",") if ":" in uri]


def _is_domain(name):
    labels = name.split(".")
    return len(labels) >= 2 and len(name) <= 253 and all(
        0 < len(label) < 64 and all(c.isalnum() or c in "-_" for c in label)
        for label in labels)


def _result(domain, result, org_domain="", policy=None, reason="", pct=100, rua=(),
            ruf=(), aligned=(), record_domain=None):
    return {"domain": domain, "result": result, "policy": policy,
            "disposition": "none", "reason": reason, "org_domain": org_domain,
            "record_domain": record_domain, "pct": pct, "rua": list(rua),
            "ruf": list(ruf), "aligned": list(aligned)}
