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

from qpsmtpd.constants import DECLINED
from qpsmtpd.log import format_line, write_stderr
from qpsmtpd.plugin import Plugin

COUNT_NOTE = "logging-transaction-count"
NOTE = "logging-transaction-id"
UNKNOWN = "???"


class TransactionId(Plugin):
    def register(self, level=None, *extra):
        self.level = self.level_argument(level)

    def hook_logging(self, session, level, hook, plugin, message):
        # Number every transaction, even one whose lines are all filtered out.
        ident = self.transaction_id(session) if session is not None else UNKNOWN
        if plugin == self.name or level > self.level:
            return DECLINED
        write_stderr(format_line(message, hook, plugin, pid=ident))
        return DECLINED

    def transaction_id(self, session):
        notes = session.transaction.notes
        ident = notes.get(NOTE)
        if ident is None:
            connection = session.connection
            number = connection.notes[COUNT_NOTE] = connection.notes.get(COUNT_NOTE, 0) + 1
            ident = notes[NOTE] = f"{connection.id}.{number}"
        return ident
