"""content_log - append a copy of every message to a file.

At ``data_post`` the whole message (header block as it will be queued,
``Received:`` line included, then the body, LF line endings) is appended to
a file; messages follow each other with no separator, as in the original.
Useful to debug other plugins or to keep a short archive. The message is
streamed from the spool, never held in memory.

Config files:

  content_log_enabled   ``true``, ``1`` or ``yes`` (any case) log; any other
                        value stops logging. Default (no file): log.
  content_log_file      the file name, passed through strftime(3) (local
                        time). Default ``mail/%Y%m%d``: one file per day in
                        ``mail/`` under the working directory, which must
                        exist.

``exclude(session)`` returns False; a subclass can override it to skip some
messages.

The plugin never changes the verdict: a file that cannot be written is
logged (LOGERROR ``error, could not write <file>: <reason>``) and the
message goes on. On success LOGINFO ``pass, saved message to <file>``.

No arguments.

Example ``config/plugins`` line (before the queue plugin)::

  content_log
"""

import time

from qpsmtpd.constants import DECLINED, LOGDEBUG
from qpsmtpd.plugin import Plugin

DEFAULT_FILE = "mail/%Y%m%d"


class ContentLog(Plugin):
    def hook_data_post(self, session):
        if self.exclude(session):
            self.log_skip("excluded")
            return DECLINED
        if not self.content_log_enabled():
            self.log(LOGDEBUG, "skip, content_log_enabled is off")
            return DECLINED
        path = self.content_log_file()
        try:
            with open(path, "ab") as out:
                for chunk in session.transaction.message_chunks():
                    out.write(chunk)
        except OSError as exc:
            self.log_error(f"could not write {path}: {exc.strerror or exc}")
            return DECLINED
        self.log_pass(f"saved message to {path}")
        return DECLINED

    def content_log_file(self):
        return time.strftime(self.config("content_log_file") or DEFAULT_FILE)

    def content_log_enabled(self):
        value = self.config("content_log_enabled")
        if value is None:
            return True
        return value.strip().lower() in ("true", "1", "yes")

    def exclude(self, session):
        return False
