"""logging/devnull - throw every log message away.

A logging plugin that writes nothing. Since loading any logging plugin
turns off qpsmtpd's built-in stderr output, listing this one silences the
daemon completely.

No arguments.

Example ``config/logging`` line::

  logging/devnull
"""

from qpsmtpd.constants import DECLINED
from qpsmtpd.plugin import Plugin


class Devnull(Plugin):
    def hook_logging(self, session, level, hook, plugin, message):
        return DECLINED
