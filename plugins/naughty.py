"""naughty - carry out the rejections other plugins deferred.

A plugin with ``reject naughty`` (dnsbl, karma, badmailfrom, earlytalker,
...) does not refuse the client itself: it marks the connection (the note
``naughty`` holds its message, prefixed with its name) and lets the mail
session go on. naughty refuses the connection at the stage chosen here, so
every deferring plugin rejects at the same moment - late enough for a
roaming user to authenticate (a successful AUTH clears the mark), early
enough not to receive the message.

At that stage, and always once more at ``data_post`` as a backstop (for a
mark set after the chosen stage, or a stage skipped because an earlier
plugin of the same hook answered OK), naughty:

* logs ``pass`` and lets the command proceed when nothing is pending;
* logs ``skip, relay client`` / ``skip, whitelisted host`` / ``skip,
  whitelisted sender`` and lets it proceed for an immune client;
* otherwise logs ``disconnecting`` and refuses with every deferred message,
  one reply line each, for example at MAIL::

    550-(dnsbl) Listed at zen.example.org
    550 (earlytalker) Connecting host started transmitting before SMTP greeting

  The kind of refusal is the ``reject_type`` of the first plugin that
  deferred (when it gave one), else naughty's own; with the default
  ``disconnect`` the connection is closed after the reply (``550`` at
  connect, MAIL and RCPT, ``554`` at DATA, ``552`` after DATA), ``perm``
  refuses the command only, ``temp`` answers 4xx.

Arguments:

  reject connect|mail|rcpt|data|data_post   the stage (default rcpt)
  reject_type disconnect|perm|temp|temp_disconnect   (default disconnect)
  loglevel

With ``rcpt``, list naughty before ``rcpt_ok``: a plugin that accepts the
recipient (OK) ends the hook before naughty runs. ``data`` avoids that.

Differences from qpsmtpd 1.0, on purpose:

* an immune client (relay client, whitelisted host or sender) is never
  refused by naughty (upstream fixed this in 2026: issue #203);
* an unknown stage stops the start with a clear message (1.0 accepted
  ``hook_queue_post`` and then died at start-up);
* several deferred messages are separate reply lines (1.0 joined them with
  CR LF, leaving a stray CR in the reply); a mark that is not a message
  (``is_naughty(1)``) gives the default reply of the stage.

Example ``config/plugins`` line (after the plugins that defer to it)::

  naughty reject data
"""

from qpsmtpd.constants import DECLINED, DENY_DISCONNECT, LOGINFO
from qpsmtpd.plugin import Plugin, PluginError, reject_type_code

STAGES = ("connect", "mail", "rcpt", "data", "data_post")


class Naughty(Plugin):
    def register(self, *args):
        self.args = self.parse_args(args, {"reject": "rcpt", "reject_type": "disconnect"})
        stage = str(self.args["reject"]).lower()
        if stage not in STAGES:
            raise PluginError(f"naughty: invalid reject stage {self.args['reject']!r}; "
                              f"use one of {', '.join(STAGES)}")
        self.stage = stage
        self.register_hook(stage, self.naughty)
        if stage != "data_post":
            self.register_hook("data_post", self.naughty)

    def naughty(self, session, *hook_args):
        notes = session.connection.notes
        pending = notes.get("naughty")
        if not pending:
            self.log_pass()
            return DECLINED
        if self.is_immune(session):
            return DECLINED
        self.log(LOGINFO, "disconnecting")
        code = reject_type_code(notes.get("naughty_reject_type") or self.args["reject_type"],
                                DENY_DISCONNECT)
        if isinstance(pending, (list, tuple)):
            message = "\n".join(str(m) for m in pending if m)
        elif isinstance(pending, str):
            message = pending
        else:
            message = ""
        return (code, message) if message else code
