"""logging/warn - qpsmtpd's built-in log output, as a logging plugin.

Writes every message at or below its level to stderr in exactly the
built-in format (under daemontools, multilog stamps and files the lines)::

  <pid> (<hook>) <plugin>: <message>     a plugin inside a hook
  <pid> <plugin>: <message>              a plugin outside a hook
  <pid> <message>                        the core

Loading any logging plugin turns the built-in output off, so list this one
in ``config/logging`` next to another logging plugin to keep the stderr
lines. Its own messages (``Initializing logging::warn plugin``) are
skipped.

Argument: the highest level written, as a number or a ``LOG*`` name
(default ``LOGWARN``, 4). An unknown name logs a warning and the default
applies.

Example ``config/logging`` line::

  logging/warn LOGINFO
"""

from qpsmtpd.constants import DECLINED, LOGINFO
from qpsmtpd.log import format_line, write_stderr
from qpsmtpd.plugin import Plugin


class Warn(Plugin):
    def register(self, level=None, *extra):
        self.level = self.level_argument(level)
        self.log(LOGINFO, "Initializing logging::warn plugin")

    def hook_logging(self, session, level, hook, plugin, message):
        if plugin == self.name or level > self.level:
            return DECLINED
        write_stderr(format_line(message, hook, plugin))
        return DECLINED
