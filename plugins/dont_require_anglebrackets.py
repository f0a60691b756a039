"""dont_require_anglebrackets - accept ``MAIL FROM:a@b`` and ``RCPT TO:a@b``.

RFC 5321 wants the path in angle brackets (``MAIL FROM:<user@example.com>``);
some broken clients and scripts leave them out, and the server then answers
``501 could not parse your mail from command``. This plugin adds the
brackets when they are missing, so ``MAIL FROM:ask@perl.org`` and
``MAIL FROM:ask@[1.2.3.4]`` are accepted like their bracketed forms.

A client that needed the help is probably not a real MTA: each repair costs
the session 2 karma points and logs (LOGINFO)
``fail, added MAIL angle brackets`` or ``fail, added RCPT angle brackets``.

It always answers its hooks with OK (the repaired or unchanged path), so
later ``mail_pre``/``rcpt_pre`` plugins never run, as in the original.

No arguments, no config files.

Example ``config/plugins`` line::

  dont_require_anglebrackets
"""

from qpsmtpd.constants import OK
from qpsmtpd.plugin import Plugin


class DontRequireAnglebrackets(Plugin):
    def hook_mail_pre(self, session, path, params):
        return OK, self._bracketed(session, "MAIL", path)

    def hook_rcpt_pre(self, session, path, params):
        return OK, self._bracketed(session, "RCPT", path)

    def _bracketed(self, session, verb, path):
        if path.startswith("<") and path.endswith(">"):
            return path
        self.log_fail(f"added {verb} angle brackets")
        self.adjust_karma(session, -2)
        return f"<{path}>"
