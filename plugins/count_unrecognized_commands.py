"""count_unrecognized_commands - disconnect clients that send too much junk.

Counts the commands the server does not recognise (unknown verbs, empty
lines, ``STARTTLS`` when TLS is not loaded ...) in the connection note
``unrec_cmd_count``. Below the limit the client gets the usual
``500 Unrecognized command``; the command that reaches the limit is answered
with

  521 Closing connection, <n> unrecognized commands. Perhaps you should read RFC 2821?

and the connection is closed. Good against spam sent through open HTTP
proxies, which relay the browser's ``GET``/``POST`` lines.

Argument: the number of unrecognised commands allowed, counting the one
that closes the connection (default 4: three ``500`` replies, then ``521``).
Further arguments are ignored (LOGWARN ``Ignoring additional arguments.``).
``0`` means the default, as in the original; a limit that is not a whole
number stops start-up.

Load it after ``tls``, which answers ``STARTTLS`` through the same hook.

Log lines (LOGINFO): ``Unrecognized command '<verb>'`` for each one, and
``fail, Closing connection, <n> unrecognized commands.`` at the limit.

Example ``config/plugins`` line::

  count_unrecognized_commands 4
"""

from qpsmtpd.constants import DECLINED, DENY_DISCONNECT, LOGINFO, LOGWARN
from qpsmtpd.plugin import Plugin, PluginError

DEFAULT_MAX = 4


class CountUnrecognizedCommands(Plugin):
    def register(self, maximum="4", *extra):
        if not str(maximum).isdigit():
            raise PluginError(f"{self.config_name}: the limit must be a whole "
                              f"number, got {maximum!r}")
        self.maximum = int(maximum) or DEFAULT_MAX
        if extra:
            self.log(LOGWARN, "Ignoring additional arguments.")

    def hook_connect(self, session):
        session.connection.notes["unrec_cmd_count"] = 0
        return DECLINED

    def hook_unrecognized_command(self, session, verb, rest):
        self.log(LOGINFO, f"Unrecognized command '{verb}'")
        notes = session.connection.notes
        count = notes["unrec_cmd_count"] = (notes.get("unrec_cmd_count") or 0) + 1
        if count >= self.maximum:
            message = f"Closing connection, {count} unrecognized commands."
            self.log_fail(message)
            return DENY_DISCONNECT, f"{message} Perhaps you should read RFC 2821?"
        return DECLINED
