"""logging/connection_id - the built-in log lines, with a connection id.

Like ``logging/warn``, but each line starts with an id of the SMTP
connection instead of the process id, so the lines of one conversation can
be picked out of a busy log even where pids are reused::

  1718035000-4711-3 (connect) relay: pass, octet match in relayclients (192.0.2.)
  1718035000-4711-3 250 OK

The id is ``<epoch seconds>-<pid, 4+ digits>-<n>`` (``n`` counts the
connections of the process), the same session id ``logging/file`` puts in
place of ``%i``; it is made at ``connect`` and kept in the connection note
``logging-session-id``. Lines logged outside a connection (the daemon's
own, and the first ``Connection from ...`` line, logged before the
``connect`` hooks run) show ``???``.

The original plugin refused to load ("The connection ID feature is
currently unsupported"); this one works as its documentation described.
Lines go to stderr; messages of the plugin itself are skipped.

Argument: the highest level written, as a number or a ``LOG*`` name
(default ``LOGWARN``).

Example ``config/logging`` line::

  logging/connection_id LOGINFO
"""

import itertools
import os
import sys
import threading
import time

from qpsmtpd.constants import DECLINED, LOGWARN, log_level
from qpsmtpd.log import format_line
from qpsmtpd.plugin import Plugin

NOTE = "logging-session-id"
UNKNOWN = "???"


class ConnectionId(Plugin):
    def register(self, level=None, *extra):
        self.level = parse_level(self, level, LOGWARN)
        self._counter = itertools.count(1)
        # The logging hook gets no session. A worker serves one connection
        # at a time in its thread, so the thread remembers which one.
        self._current = threading.local()

    def hook_logging(self, session, level, hook, plugin, message):
        if plugin == self.name or level > self.level:
            return DECLINED
        current = getattr(self._current, "session", None)
        ident = current.connection.notes.get(NOTE, UNKNOWN) if current else UNKNOWN
        write_stderr(format_line(message, hook, plugin, pid=ident))
        return DECLINED

    def hook_connect(self, session):
        session.connection.notes.setdefault(
            NOTE, "%08d-%04d-%d" % (time.time(), os.getpid(), next(self._counter)))
        self._current.session = session
        return DECLINED

    def hook_post_connection(self, session):
        self._current.session = None
        return DECLINED


def parse_level(plugin, value, default):
    """A level argument (digits or a ``LOG*`` name) as an int."""
    if value is None:
        return int(default)
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    level = log_level(text)
    if level is None:
        plugin.log(LOGWARN, f"unknown log level {text!r}, using {log_level(default)}")
        return int(default)
    return int(level)


def write_stderr(line):
    stream = sys.stderr
    try:
        try:
            stream.write(line + "\n")
        except UnicodeEncodeError:
            stream.write(line.encode("ascii", "backslashreplace").decode("ascii") + "\n")
        stream.flush()
    except (OSError, ValueError, AttributeError):
        pass
