"""badmailfromto - refuse mail from given senders to given recipients.

For cases of harassment: mail from a listed sender to a listed recipient is
refused as if the recipient did not exist, so the sender is not told that
they are blocked. Other recipients of the same sender are not affected.

``config/badmailfromto`` holds one pair per line, separated by white space
(a tab in the original; any blanks work here)::

  stalker@example.com    victim@example.org
  @example.net           victim@example.org

The sender side is an address or ``@domain``; the recipient side an
address. Both are compared in lower case. At MAIL FROM the plugin notes
which sender entries match (transaction note ``badmailfromto``); at RCPT
TO a listed pair is refused with ``550 mail to <recipient> not accepted
here`` (``<recipient>`` lower-cased; ``550 5.7.1 ...`` after EHLO).

Skipped: an empty list, the null sender ``<>``, senders without a user or
a domain. Sender entries without ``@`` are ignored with a warning.

Fixed on purpose: the original remembered only the last sender entry that
matched, so with both ``user@example.net`` and ``@example.net`` listed the
pairs of the first were never enforced; all matching entries count here.

No arguments. Example ``config/plugins`` line::

  badmailfromto
"""

from qpsmtpd.constants import DECLINED, DENY, LOGDEBUG, LOGWARN
from qpsmtpd.plugin import Plugin


class BadMailFromTo(Plugin):
    def hook_mail(self, session, sender, params):
        pairs = self.config_list("badmailfromto")
        if self.is_immune_sender(sender, pairs):
            return DECLINED
        host = sender.host.lower()
        sender_text = f"{sender.user.lower()}@{host}"
        matched = []
        for line in pairs:
            bad = line.split()[0].lower()
            if "@" not in bad:
                self.log(LOGWARN, f"bad config, no @ sign in {bad}")
                continue
            if bad in (sender_text, "@" + host) and bad not in matched:
                matched.append(bad)
        if matched:
            session.transaction.notes["badmailfromto"] = matched
        return DECLINED

    def hook_rcpt(self, session, recipient, params):
        senders = session.transaction.notes.get("badmailfromto")
        if not senders:
            self.log(LOGDEBUG, "pass, sender not listed")
            return DECLINED
        recipient_text = f"{(recipient.user or '').lower()}@{(recipient.host or '').lower()}"
        for line in self.config_list("badmailfromto"):
            words = line.split()
            if len(words) < 2:
                continue
            if words[0].lower() in senders and words[1].lower() == recipient_text:
                self.log_fail(f"{words[0].lower()} to {recipient_text}")
                return DENY, f"mail to {recipient_text} not accepted here"
        self.log(LOGDEBUG, "pass, recipient not listed")
        return DECLINED
