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

import sys

from qpsmtpd.constants import DECLINED, LOGINFO, LOGWARN, log_level
from qpsmtpd.log import format_line
from qpsmtpd.plugin import Plugin


class Warn(Plugin):
    def register(self, level=None, *extra):
        self.level = parse_level(self, level, LOGWARN)
        self.log(LOGINFO, "Initializing logging::warn plugin")

    def hook_logging(self, session, level, hook, plugin, message):
        if plugin == self.name or level > self.level:
            return DECLINED
        write_stderr(format_line(message, hook, plugin))
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
        # stderr gone: logging must never take a session down
        pass
