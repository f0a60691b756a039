"""connection_time - log how long each connection lasted.

The clock starts at ``pre-connection`` (qpsmtpd-forkserver, in the parent,
before the fork) or, when that hook does not run (tcpserver, inetd), at
``connect``; at ``post-connection`` the plugin logs (LOGINFO) the elapsed
time with three decimals::

  73122 (post-connection) connection_time: 1.048 s.

If neither start hook ran: LOGERROR ``Start time not set?!``. The start is
kept in the connection note ``connection_time_start`` (monotonic clock).

Arguments: ``loglevel <level>`` (§8.5: a digit fixes the level of every line,
``+N``/``-N`` shifts it), or — as in older versions — one positional level
(number or name such as ``LOGNOTICE``). An odd number of other arguments
logs LOGERROR ``invalid arguments``.

Example ``config/plugins`` lines::

  connection_time
  connection_time loglevel +1
  connection_time LOGNOTICE
"""

import time

from qpsmtpd.constants import DECLINED, LOGDEBUG, LOGERROR, LOGINFO
from qpsmtpd.plugin import Plugin

NOTE = "connection_time_start"


class ConnectionTime(Plugin):
    def register(self, *args):
        if len(args) == 1:
            self.set_loglevel(args[0])
        elif len(args) % 2:
            self.log(LOGERROR, "invalid arguments")
        else:
            self.args = self.parse_args(args)

    def hook_pre_connection(self, session, info):
        self._start(session)
        return DECLINED

    def hook_connect(self, session):
        if NOTE not in session.connection.notes:
            self._start(session)
        return DECLINED

    def hook_post_connection(self, session):
        started = session.connection.notes.get(NOTE)
        if started is None:
            self.log(LOGERROR, "Start time not set?!")
            return DECLINED
        self.log(LOGINFO, "%.3f s." % (time.monotonic() - started))
        return DECLINED

    def _start(self, session):
        session.connection.notes[NOTE] = time.monotonic()
        self.log(LOGDEBUG, f"started at {time.time():.3f}")
