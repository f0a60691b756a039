"""badmailfrom - refuse envelope senders listed in config/badmailfrom.

qmail's badmailfrom with per-line reasons and patterns. Each line of
``config/badmailfrom`` is one entry, optionally followed by the reason the
client is given:

  user@example.com            an exact sender (case-insensitive)
  @example.net                every sender at that domain
  ^return.*@.*\\.example\\.biz$  a regular expression (any entry holding one
                              of the characters / ^ $ * + ! % ? \\), searched
                              in the lower-cased ``user@host``; anchor it
                              yourself with ^ and $

  user@example.com   Your mail is not welcome here

Without a reason the reply is ``Your envelope sender is in my badmailfrom
list``. A listed sender costs the session 1 karma point, then the
``reject`` setting decides (at MAIL FROM): ``550 <reason>`` by default
(``550 5.7.1 <reason>`` after EHLO).

Skipped: immune sessions (relay clients, whitelisted hosts or senders),
an empty list, the null sender ``<>``, and senders without a user or a
domain. An entry without ``@`` that is not a pattern is ignored with a
warning, as is a pattern Python cannot compile.

Arguments:

  reject 1|0|naughty    1 (default) refuse at MAIL; 0 only log
                        (``fail, tolerated``); naughty defers the refusal to
                        the ``naughty`` plugin
  reject_type perm|temp|disconnect|temp_disconnect   (default perm: 550)

Log lines (LOGINFO): ``pass``, ``fail`` (``fail, tolerated``,
``fail, NAUGHTY``), ``karma -1 (<total>)``.

Example ``config/plugins`` line::

  badmailfrom reject naughty
"""

import re

from qpsmtpd.constants import DECLINED, LOGDEBUG, LOGERROR, LOGWARN
from qpsmtpd.plugin import Plugin

DEFAULT_REASON = "Your envelope sender is in my badmailfrom list"
_PATTERN_CHARS = re.compile(r"[/^$*+!%?\\]")


class BadMailFrom(Plugin):
    def register(self, *args):
        self.args = self.parse_args(args, {"reject": "1"})

    def hook_mail(self, session, sender, params):
        if self.is_immune(session):
            return DECLINED
        entries = self.config_list("badmailfrom")
        if self.is_immune_sender(sender, entries):
            return DECLINED
        host = sender.host.lower()
        sender_text = f"{sender.user.lower()}@{host}"
        for line in entries:
            bad, reason = _split_entry(line)
            if self.is_match(sender_text, bad, host):
                self.adjust_karma(session, -1)
                return self.get_reject(session, reason or DEFAULT_REASON)
        self.log_pass()
        return DECLINED

    def is_match(self, sender_text, bad, host):
        if _PATTERN_CHARS.search(bad):
            try:
                found = re.search(bad, sender_text)
            except re.error as exc:
                self.log(LOGERROR, f"badmailfrom: bad pattern {bad}: {exc}")
                return False
            if found:
                self.log(LOGDEBUG, f"badmailfrom pattern ({bad}) match for {sender_text}")
                return True
            return False
        bad = bad.lower()
        if "@" not in bad:
            self.log(LOGWARN, f"badmailfrom: bad config: no @ sign in {bad}")
            return False
        if bad.startswith("@"):
            return bad == "@" + host
        return bad == sender_text


def _split_entry(line):
    """``(entry, reason)`` from one config line; reason may be ''."""
    words = line.split(None, 1)
    return words[0], (words[1].strip() if len(words) > 1 else "")
