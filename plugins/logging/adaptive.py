"""logging/adaptive - log more for rejected mail, less for accepted mail.

Two thresholds:

* ``reject`` (default ``LOGWARN``): every message at or below it is written
  to stderr at once, as::

    <pid> <plugin> plugin: <message>        a plugin's message
    <pid> running plugin (<hook>): <plugin>  the core's per-plugin trace
    <pid> <message>                          the core

* ``accept`` (default ``LOGERROR``): messages at or below both thresholds
  are also kept with the transaction (inside a connection, from its
  ``Connection from ...`` line on; the daemon's own lines are written
  once). When the transaction ends
  (``reset_transaction``: after the queue, RSET, the next MAIL, the end of
  the connection) and nothing in the connection was rejected so far, the
  kept lines are written again with the prefix after the pid::

    <pid> <prefix> <plugin> plugin: <message>

  so multilog can file the lines of accepted mail apart, e.g. in
  ``log/run``: ``multilog t '-*` *' ./main/detailed '-*' '+*` *' ./main/accepted``.

Once a plugin has rejected anything (the ``deny`` hook), the lines of the
rest of that connection are no longer repeated as accepted. The original
kept this flag per process; since every worker serves one connection, it is
kept per connection here (connection note ``logging-adaptive-denied``).
Lines mentioning this plugin are not written.

Arguments (``key value`` pairs): ``accept <level>``, ``reject <level>`` (a
number or a ``LOG*`` name), ``prefix <chars>`` (default a backtick). Other
keys are ignored, so the sample's ``logging/adaptive 4 6`` gives the
defaults; an odd number of words stops start-up.

Example ``config/logging`` line::

  logging/adaptive accept LOGINFO reject LOGDEBUG prefix `
"""

import os

from qpsmtpd.constants import DECLINED, LOGERROR, LOGINFO
from qpsmtpd.log import write_stderr
from qpsmtpd.plugin import Plugin

KEPT_NOTE = "logging-adaptive"
DENIED_NOTE = "logging-adaptive-denied"
CORE_TRACE = "running plugin"   # how the engine names its per-plugin trace


class Adaptive(Plugin):
    def register(self, *args):
        self.args = self.parse_args(args)
        self.accept = self.level_argument(self.args.get("accept"), LOGERROR)
        self.reject = self.level_argument(self.args.get("reject"))
        self.prefix = self.args.get("prefix") or "`"
        self.log(LOGINFO, "Initializing logging::adaptive plugin")

    def hook_logging(self, session, level, hook, plugin, message):
        if plugin == self.name or level > self.reject:
            return DECLINED
        if self.name not in message:
            write_stderr(f"{os.getpid()}{_tag(hook, plugin)} {message}")
        if level <= self.accept and session is not None:
            session.transaction.notes.setdefault(KEPT_NOTE, []).append(
                (hook, plugin, message))
        return DECLINED

    def hook_reset_transaction(self, session):
        if session.connection.notes.get(DENIED_NOTE):
            return DECLINED
        for hook, plugin, message in session.transaction.notes.pop(KEPT_NOTE, ()):
            write_stderr(f"{os.getpid()} {self.prefix}{_tag(hook, plugin)} {message}")
        return DECLINED

    def hook_deny(self, session, plugin_name, code, message):
        session.connection.notes[DENIED_NOTE] = True
        return DECLINED


def _tag(hook, plugin):
    if plugin and plugin != CORE_TRACE:
        return f" {plugin} plugin:"
    if hook:
        return f" running plugin ({hook}):"
    return ""
