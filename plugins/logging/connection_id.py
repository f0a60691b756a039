"""logging/connection_id - the built-in log lines, with a connection id.

Like ``logging/warn``, but each line starts with an id of the SMTP
connection instead of the process id, so the lines of one conversation can
be picked out of a busy log even where pids are reused::

  1718035000-4711-3 (connect) relay: pass, octet match in relayclients (192.0.2.)
  1718035000-4711-3 250 OK

The id is ``<epoch seconds>-<pid, 4+ digits>-<n>`` (``n`` counts the
connections of the process), the same session id ``logging/file`` puts in
place of ``%i``; it is made at the connection's first line (``Connection
from ...``) and kept in the connection note ``logging-session-id``. Lines
logged outside a connection (the daemon's own) show ``???``.

The original plugin refused to load ("The connection ID feature is
currently unsupported"); this one works as its documentation described.
Lines go to stderr; messages of the plugin itself are skipped.

Argument: the highest level written, as a number or a ``LOG*`` name
(default ``LOGWARN``).

Example ``config/logging`` line::

  logging/connection_id LOGINFO
"""

from qpsmtpd.constants import DECLINED
from qpsmtpd.log import format_line, write_stderr
from qpsmtpd.plugin import Plugin

UNKNOWN = "???"


class ConnectionId(Plugin):
    def register(self, level=None, *extra):
        self.level = self.level_argument(level)

    def hook_logging(self, session, level, hook, plugin, message):
        # The id is made at a connection's first line, whatever its level,
        # so every plugin that shows it numbers connections alike.
        ident = session.connection.id if session is not None else UNKNOWN
        if plugin == self.name or level > self.level:
            return DECLINED
        write_stderr(format_line(message, hook, plugin, pid=ident))
        return DECLINED
