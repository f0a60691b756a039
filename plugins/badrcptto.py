"""badrcptto - refuse recipients listed in config/badrcptto.

Like ``badmailfrom``, for recipients. Each line of ``config/badrcptto`` is
one entry, optionally followed by a reason:

  spamtrap@example.org           an exact recipient (case-insensitive)
  @old.example.org               every recipient at that domain
  ^(info|sales)@example\\.org$    a regular expression (any entry holding one
                                 of / ^ $ * + ! % ? \\), searched
                                 case-insensitively in ``user@host``

A listed recipient costs the session 2 karma points and is refused at
RCPT TO: with the line's reason when it has one (``550 <reason>``), else
with ``550 mail to <entry> not accepted here (#5.1.1)`` (after EHLO
``550 5.1.1 mail to <entry> not accepted here (#5.1.1)``).

Skipped: immune sessions (relay clients, whitelisted hosts or senders; the
original's behaviour, upstream issue #223), an empty list, recipients
without a user or a domain. An entry without ``@`` that is not a pattern is
ignored (LOGERROR), as is a pattern Python cannot compile.

A pattern is used as written, not lower-cased first (the original
lower-cased it, which turned ``\\S`` into ``\\s``); the match ignores case.

No arguments. Log lines (LOGINFO): ``pass``, ``fail, rcpt match``,
``fail, host match``, ``fail, pattern match``, ``karma -2 (<total>)``,
``skip, empty config``, ``skip, missing host or user``.

Example ``config/plugins`` line::

  badrcptto
"""

import re

from qpsmtpd.constants import DECLINED, DENY, LOGDEBUG, LOGERROR
from qpsmtpd.plugin import Plugin

_PATTERN_CHARS = re.compile(r"[/^$*+!%?\\]")


class BadRcptTo(Plugin):
    def hook_rcpt(self, session, recipient, params):
        if self.is_immune(session):
            return DECLINED
        host_and_to = self.get_host_and_to(recipient)
        if host_and_to is None:
            return DECLINED
        host, to = host_and_to
        entries = self.config_list("badrcptto")
        if not entries:
            self.log_skip("empty config")
            return DECLINED
        for line in entries:
            words = line.split(None, 1)
            bad = words[0]
            reason = words[1].strip() if len(words) > 1 else ""
            if self.is_match(to, bad, host):
                self.adjust_karma(session, -2)
                if reason:
                    return DENY, reason
                return DENY, f"mail to {bad.lower()} not accepted here (#5.1.1)"
        self.log_pass()
        return DECLINED

    def is_match(self, to, bad, host):
        if _PATTERN_CHARS.search(bad):
            self.log(LOGDEBUG, f"badrcptto pattern ({bad}) match for {to}")
            try:
                found = re.search(bad, to, re.IGNORECASE)
            except re.error as exc:
                self.log(LOGERROR, f"badrcptto: bad pattern {bad}: {exc}")
                return False
            if found:
                self.log_fail("pattern match")
                return True
            return False
        bad = bad.lower()
        if "@" not in bad:
            self.log(LOGERROR, f"badrcptto: bad config: no @ sign in {bad}")
            return False
        if bad.startswith("@"):
            if bad == "@" + host:
                self.log_fail("host match")
                return True
            return False
        if bad == to.lower():
            self.log_fail("rcpt match")
            return True
        return False

    def get_host_and_to(self, recipient):
        """``(host, user@host)`` in lower case, or None (logged) when incomplete."""
        if recipient is None:
            self.log_error("no recipient!")
            return None
        if not recipient.host or not recipient.user:
            self.log_skip("missing host or user")
            return None
        host = recipient.host.lower()
        return host, f"{recipient.user.lower()}@{host}"
