"""logging/transaction_id - the built-in log lines, with a transaction id.

Like ``logging/warn``, but each line starts with an id of the mail
transaction instead of the process id::

  1718035000-4711-3.1 dispatching EHLO client.example.net
  1718035000-4711-3.2 dispatching RCPT TO:<a@example.org>

The id is the connection's session id (see ``logging/connection_id``;
``<epoch>-<pid>-<n>``, connection note ``logging-session-id``) followed by
``.<t>``, the number of the transaction within the connection: each MAIL,
RSET or finished message starts a new transaction and a new number. The
number is given when the transaction logs its first line and kept in the
transaction note ``logging-transaction-id``. Lines logged outside a
connection show ``???``.

The original plugin refused to load ("The transaction ID feature is
currently unsupported"); this one works as its documentation described.
Lines go to stderr; messages of the plugin itself are skipped.

Argument: the highest level written, as a number or a ``LOG*`` name
(default ``LOGWARN``).

Example ``config/logging`` line::

  logging/transaction_id LOGINFO
"""

import itertools
import os
import sys
import threading
import time

from qpsmtpd.constants import DECLINED, LOGWARN, log_level
from qpsmtpd.log import format_line
from qpsmtpd.plugin import Plugin

SESSION_NOTE = "logging-session-id"
COUNT_NOTE = "logging-transaction-count"
NOTE = "logging-transaction-id"
UNKNOWN = "???"


class TransactionId(Plugin):
    def register(self, level=None, *extra):
        self.level = parse_level(self, level, LOGWARN)
        self._counter = itertools.count(1)
        # The logging hook gets no session. A worker serves one connection
        # at a time in its thread, so the thread remembers which one.
        self._current = threading.local()

    def hook_logging(self, session, level, hook, plugin, message):
        current = getattr(self._current, "session", None)
        # Number every transaction, even one whose lines are all filtered out.
        ident = self.transaction_id(current) if current else UNKNOWN
        if plugin == self.name or level > self.level:
            return DECLINED
        write_stderr(format_line(message, hook, plugin, pid=ident))
        return DECLINED

    def hook_connect(self, session):
        session.connection.notes.setdefault(
            SESSION_NOTE, "%08d-%04d-%d" % (time.time(), os.getpid(), next(self._counter)))
        self._current.session = session
        return DECLINED

    def hook_post_connection(self, session):
        self._current.session = None
        return DECLINED

    @staticmethod
    def transaction_id(session):
        notes = session.transaction.notes
        ident = notes.get(NOTE)
        if ident is None:
            connection_notes = session.connection.notes
            number = connection_notes[COUNT_NOTE] = connection_notes.get(COUNT_NOTE, 0) + 1
            ident = notes[NOTE] = f"{connection_notes.get(SESSION_NOTE, UNKNOWN)}.{number}"
        return ident


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
