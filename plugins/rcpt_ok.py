"""rcpt_ok - accept recipients in our own domains; relay clients may send anywhere.

qmail's rcpthosts check. A recipient is accepted (OK) when:

* the session is a relay client (``relay`` plugin, AUTH): any domain;
* its domain, lower-cased, equals ``config/me`` or a line of
  ``config/rcpthosts`` (compared in lower case);
* its domain ends with a ``config/rcpthosts`` entry that starts with a dot
  (``.example.org`` accepts ``mail.example.org`` and any deeper name, but
  not ``example.org`` itself: list that too);
* its domain is a key of ``config/morercpthosts.cdb``.

A bare ``<postmaster>`` (and ``abuse`` without a domain, should another
plugin produce one) is mail for ``config/me``. Every other recipient is
refused with ``550 Relaying denied (#5.7.1)`` (after EHLO:
``550 5.7.1 Relaying denied (#5.7.1)``). A recipient without a domain that
is neither postmaster nor abuse is refused too.

This plugin decides for every recipient, so it must be the last rcpt
plugin in ``config/plugins``. No arguments.

Differences from qpsmtpd:

* the original let every *immune* session send to any domain, and
  immunity includes a whitelisted sender (which any client can claim) and
  hosts in DNS allowlists (``dns_whitelist_soft``) - an open relay for
  anyone who forges a whitelisted address. Here only relay clients may send
  to domains we do not handle; whitelisted hosts and senders still skip the
  other checks, but not this one;
* the address parser accepts any single character between domain labels
  (a compatibility quirk), so ``user@victim.example>x.example.org`` or
  ``user@victim.example%x.example.org`` has a "domain" that ends in
  ``.example.org``; the original accepted those through a ``.example.org``
  entry and handed them on, where the system behind the queue may read them
  as mail for ``victim.example``. Here a ``.suffix`` entry only matches a
  plain host name (letters, digits, hyphens, dots);
* domains are compared in ASCII: a domain holding any other character is
  never ours. (Python's ``lower()`` turns the Kelvin sign, U+212A, into
  ``k``, so ``parkway.example`` spelt with it would otherwise match; the
  original compared bytes and did not match it either.)

A recipient accepted here is handed to the queue exactly as given, local
part included: ``user%victim.example@example.org`` and
``"user@victim.example"@example.org`` are mail for ``example.org``; whether
the system behind the queue routes on ``%`` or ``!`` in a local part is its
own configuration.

Log lines (LOGINFO): ``pass, <host> in rcpthosts``, ``pass, <host> in
rcpthosts as <.entry>``, ``pass, <host> found in morercpthosts``,
``fail, <host> not in morercpthosts``, ``fail, no domain in <recipient>``,
``fail, no ASCII domain in <recipient>``.

Example ``config/plugins`` line (the last of the rcpt plugins)::

  rcpt_ok
"""

import re

from qpsmtpd.constants import DENY, OK
from qpsmtpd.plugin import Plugin

RELAYING_DENIED = "Relaying denied (#5.7.1)"

# A host name a ".suffix" entry may match: dot-separated labels.
_PLAIN_HOST = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
                         r"(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*\Z")


class RcptOk(Plugin):
    def hook_rcpt(self, session, recipient, params):
        if session.connection.relay_client:
            self.log_skip("relay client")
            return OK
        host = self.get_rcpt_host(recipient)
        if host is None:
            what = "no ASCII domain" if recipient.host else "no domain"
            self.log_fail(f"{what} in {recipient.format()}")
            return DENY, RELAYING_DENIED
        if self.is_in_rcpthosts(host) or self.is_in_morercpthosts(host):
            return OK
        return DENY, RELAYING_DENIED

    def get_rcpt_host(self, recipient):
        """The recipient's domain in lower case; ``me`` for bare postmaster/abuse;
        None when there is none, or it is not ASCII."""
        if recipient is None:
            return None
        if recipient.host:
            if not recipient.host.isascii():
                return None
            return recipient.host.lower()
        if (recipient.user or "").lower() in ("postmaster", "abuse"):
            return (self.config("me") or "").lower()
        return None

    def is_in_rcpthosts(self, host):
        me = (self.config("me") or "").split()
        if me and host == me[0].lower():
            self.log_pass(f"{host} in rcpthosts")
            return True
        exact, suffixes = self.parsed_config("rcpthosts", _parse_rcpthosts)
        first = exact.get(host)
        for index, allowed in suffixes:
            if first is not None and index >= first:
                break
            if host.endswith(allowed) and _PLAIN_HOST.match(host):
                self.log_pass(f"{host} in rcpthosts as {allowed}")
                return True
        if first is not None:
            self.log_pass(f"{host} in rcpthosts")
            return True
        return False

    def is_in_morercpthosts(self, host):
        if host in self.parsed_config_map("morercpthosts"):
            self.log_pass(f"{host} found in morercpthosts")
            return True
        self.log_fail(f"{host} not in morercpthosts")
        return False


def _parse_rcpthosts(lines):
    """``({domain: line index}, [(line index, .suffix)])`` of rcpthosts, in
    lower case: parsed once per change of the file, not per recipient."""
    exact, suffixes = {}, []
    for index, line in enumerate(lines):
        words = line.split()
        if not words:
            continue
        allowed = words[0].lower()
        exact.setdefault(allowed, index)
        if allowed.startswith("."):
            suffixes.append((index, allowed))
    return exact, suffixes
