"""random_error - fail sessions at random, to test how clients cope.

A chaos tool: at each of the seven stages a message passes (connect, HELO,
EHLO, MAIL, RCPT, DATA, end of data) the plugin may answer with a temporary
failure, ``random failure``: 2 in 5 failures are DENYSOFT_DISCONNECT (the
connection is closed), 3 in 5 plain DENYSOFT. The client sees the stage's
temporary reply with the text ``random failure``: ``450`` at connect (and
the connection closes either way), HELO/EHLO, MAIL and RCPT (``421`` at
MAIL and RCPT for the disconnecting kind), ``451`` at DATA, ``452`` after
the data.

Argument: the percentage of sessions that should fail (default 1). The
chance at each stage is chosen so that six stages together fail that
percentage: ``1 - (1 - pct/100) ** (1/6)``. ``100`` fails every session at
connect; ``0`` or a negative number never fails (the original read ``0``
as the default 1). Values above 100 count as 100. More than one argument,
or one that is not a number, stops start-up.

Other plugins may change the rate for one connection by setting the
connection note ``random_fail_%`` (set from the argument at connect).

Log line at each stage (LOGINFO): ``to fail, rand(1) must be more than <x>``.

Example ``config/plugins`` line::

  random_error 5
"""

import random

from qpsmtpd.constants import DECLINED, DENYSOFT, DENYSOFT_DISCONNECT, LOGINFO
from qpsmtpd.plugin import Plugin, PluginError

NOTE = "random_fail_%"


class RandomError(Plugin):
    def register(self, *args):
        if len(args) > 1:
            raise PluginError(f"Invalid args: '{' '.join(args)}'")
        try:
            self.percentage = float(args[0]) if args else 1.0
        except ValueError:
            raise PluginError(f"Invalid args: '{args[0]}'") from None

    def hook_connect(self, session):
        session.connection.notes[NOTE] = self.percentage
        return self.random_fail(session)

    def random_fail(self, session, *args):
        try:
            percentage = float(session.connection.notes.get(NOTE, self.percentage))
        except (TypeError, ValueError):
            percentage = self.percentage
        success = 1 - min(100.0, max(0.0, percentage)) / 100
        threshold = success ** (1 / 6)
        self.log(LOGINFO, f"to fail, rand(1) must be more than {threshold}")
        if random.random() < threshold:
            return DECLINED
        if random.random() * 5 < 2:
            return DENYSOFT_DISCONNECT, "random failure"
        return DENYSOFT, "random failure"

    hook_helo = hook_ehlo = hook_mail = hook_rcpt = hook_data = \
        hook_data_post = random_fail
