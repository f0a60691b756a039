"""logging/syslog - send log messages to syslog.

Every message at or below ``loglevel`` goes to the local syslog daemon
(through ``/dev/log``, with the process id in each entry), the message
text alone, without the ``(<hook>) <plugin>:`` part of the stderr format.
qpsmtpd's levels map to the syslog priorities of the same name: 0
LOG_EMERG, 1 LOG_ALERT, 2 LOG_CRIT, 3 LOG_ERR, 4 LOG_WARNING, 5 LOG_NOTICE,
6 LOG_INFO, 7 LOG_DEBUG.

Arguments (``key value`` pairs, all optional):

  loglevel <level>   highest level sent: number or ``LOG*`` name (default LOGWARN)
  priority <p>       send every message at this priority instead: a number,
                     a syslog name (``LOG_NOTICE``) or a qpsmtpd level name
  ident <name>       the program name in each entry (default ``qpsmtpd``;
                     letters, digits, ``_ - .``)
  facility <f>       ``LOG_MAIL`` (default), ``LOG_LOCAL0``, ``local0`` ...
  logsock <types>    accepted for compatibility; Python's syslog always
                     writes to the local socket, so any value other than
                     ``unix``/``native`` logs a warning

An odd number of words logs LOGWARN ``Malformed arguments to syslog plugin``
and the plugin stays inactive, as does an unknown facility. syslog(3) keeps
one ident and facility per process: with several instances the last one
loaded sets them.

Example ``config/logging`` line::

  logging/syslog loglevel LOGINFO priority LOG_NOTICE
"""

import re
import syslog

from qpsmtpd.constants import DECLINED, LOGWARN, log_level
from qpsmtpd.plugin import Plugin

_IDENT = re.compile(r"[\w\-.]+\Z", re.ASCII)
_NATIVE_SOCKETS = {"unix", "native"}


class Syslog(Plugin):
    def register(self, *args):
        if len(args) % 2:
            self.log(LOGWARN, "Malformed arguments to syslog plugin")
            return False
        options = dict(zip(args[0::2], args[1::2]))
        self.level = self.level_argument(options.get("loglevel"))
        self.priority = None
        if options.get("priority"):
            self.priority = syslog_number(options["priority"], "LOG_")
            if self.priority is None:
                self.log(LOGWARN, f"ignoring unknown priority {options['priority']}")
        ident = options.get("ident") or "qpsmtpd"
        if not _IDENT.match(ident):
            self.log(LOGWARN, f"ignoring invalid ident {ident!r}")
            ident = "qpsmtpd"
        facility = syslog_number(options.get("facility") or "LOG_MAIL", "LOG_",
                                 levels=False)
        if facility is None:
            self.log(LOGWARN, f"Error opening syslog output: unknown facility "
                              f"{options['facility']}")
            return False
        unsupported = set(options.get("logsock", "").split(",")) - _NATIVE_SOCKETS - {""}
        if unsupported:
            self.log(LOGWARN, f"logsock {','.join(sorted(unsupported))} not supported, "
                              "using the local syslog socket")
        syslog.openlog(ident, syslog.LOG_PID, facility)

    def hook_logging(self, session, level, hook, plugin, message):
        if level > self.level or plugin == self.name:
            return DECLINED
        priority = self.priority if self.priority is not None else min(7, max(0, level))
        text = message.encode("utf-8", "backslashreplace").decode("utf-8")
        syslog.syslog(priority, text)
        return DECLINED


def syslog_number(value, prefix, levels=True):
    """A syslog priority or facility from a number or a name; None if unknown."""
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    name = text.upper()
    if not name.startswith(prefix):
        name = prefix + name
    number = getattr(syslog, name, None)
    if isinstance(number, int):
        return number
    if levels and log_level(text) is not None:
        return int(log_level(text))
    return None
