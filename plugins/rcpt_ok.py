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

Difference from qpsmtpd: the original let every *immune* session send to
any domain, and immunity includes a whitelisted sender (which any client
can claim) and hosts in DNS allowlists (``dns_whitelist_soft``) - an open
relay for anyone who forges a whitelisted address. Here only relay clients
may send to domains we do not handle; whitelisted hosts and senders still
skip the other checks, but not this one.

Log lines (LOGINFO): ``pass, <host> in rcpthosts``, ``pass, <host> in
rcpthosts as <.entry>``, ``pass, <host> found in morercpthosts``,
``fail, <host> not in morercpthosts``.

Example ``config/plugins`` line (the last of the rcpt plugins)::

  rcpt_ok
"""

from qpsmtpd.constants import DENY, OK
from qpsmtpd.plugin import Plugin

RELAYING_DENIED = "Relaying denied (#5.7.1)"


class RcptOk(Plugin):
    def hook_rcpt(self, session, recipient, params):
        if session.connection.relay_client:
            self.log_skip("relay client")
            return OK
        host = self.get_rcpt_host(recipient)
        if host is None:
            self.log_fail(f"no domain in {recipient.format()}")
            return DENY, RELAYING_DENIED
        if self.is_in_rcpthosts(host) or self.is_in_morercpthosts(host):
            return OK
        return DENY, RELAYING_DENIED

    def get_rcpt_host(self, recipient):
        """The recipient's domain in lower case; ``me`` for bare postmaster/abuse."""
        if recipient is None:
            return None
        if recipient.host:
            return recipient.host.lower()
        if (recipient.user or "").lower() in ("postmaster", "abuse"):
            return (self.config("me") or "").lower()
        return None

    def is_in_rcpthosts(self, host):
        for line in [self.config("me") or ""] + self.config_list("rcpthosts"):
            words = line.split()
            if not words:
                continue
            allowed = words[0].lower()
            if host == allowed:
                self.log_pass(f"{host} in rcpthosts")
                return True
            if allowed.startswith(".") and host.endswith(allowed):
                self.log_pass(f"{host} in rcpthosts as {allowed}")
                return True
        return False

    def is_in_morercpthosts(self, host):
        if host in self.config_map("morercpthosts"):
            self.log_pass(f"{host} found in morercpthosts")
            return True
        self.log_fail(f"{host} not in morercpthosts")
        return False
