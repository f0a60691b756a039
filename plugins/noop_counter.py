"""noop_counter - disconnect after too many consecutive NOOPs.

Counts ``NOOP`` commands in a row (connection note ``noop_count``); the one
that reaches the limit is answered with

  500 Stop wasting my time, too many consecutive NOOPs

and the connection is closed. HELO, EHLO, MAIL, RCPT, DATA, RSET (and
every other transaction reset), VRFY and HELP set the count back to 0;
other commands (QUIT, unknown verbs) leave it alone.

Argument: the number of consecutive NOOPs that closes the connection
(default 3). A value that is not a whole number is ignored, as in the
original (LOGWARN).

Load it early, so that its counter reset runs before a plugin of the same
hook can answer and stop the others.

Example ``config/plugins`` line::

  noop_counter 3
"""

from qpsmtpd.constants import DECLINED, DENY_DISCONNECT, LOGWARN
from qpsmtpd.plugin import Plugin

DEFAULT_MAX = 3


class NoopCounter(Plugin):
    def register(self, maximum=None, *extra):
        self.maximum = DEFAULT_MAX
        if maximum is not None:
            if maximum.isdigit() and int(maximum) > 0:
                self.maximum = int(maximum)
            else:
                self.log(LOGWARN, f"ignoring invalid maximum {maximum!r}, "
                                  f"using {DEFAULT_MAX}")

    def hook_noop(self, session):
        notes = session.connection.notes
        count = notes["noop_count"] = (notes.get("noop_count") or 0) + 1
        if count >= self.maximum:
            self.log_fail(f"{count} consecutive NOOPs")
            return DENY_DISCONNECT, "Stop wasting my time, too many consecutive NOOPs"
        return DECLINED

    def reset_noop_counter(self, session, *args):
        session.connection.notes["noop_count"] = 0
        return DECLINED

    hook_helo = hook_ehlo = hook_mail = hook_rcpt = hook_data = \
        hook_reset_transaction = hook_vrfy = hook_help = reset_noop_counter
