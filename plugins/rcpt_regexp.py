"""rcpt_regexp - decide recipients by address or regular expression.

Each line of ``config/rcpt_regexp`` is ``pattern CONSTANT [message]``:

  me@example.org            OK       Accepting mail
  /^user\\d+@doma\\.in$/      OK       Accepting mail
  info@example.com          DENY     User not found.
  /^unused@.*/              DENY     User not found.
  /^.*$/                    DECLINED Fall through to next rcpt plugin

A pattern between slashes is a regular expression searched in the
recipient's ``user@host``, ignoring case; anything else is an address
compared with the lower-cased recipient. The first matching line decides:
its CONSTANT (a return-code name: ``OK``, ``DENY``, ``DENYSOFT``,
``DENY_DISCONNECT``, ``DENYSOFT_DISCONNECT``, ``DECLINED``) is the result and
its message the reply text, e.g. ``550 User not found.`` for DENY. ``OK``
accepts the recipient without asking later rcpt plugins (``rcpt_ok``).

Lines with an invalid regex, no CONSTANT, or an unknown CONSTANT are
skipped with a warning. ``DONE`` is refused too (it would leave the client
without a reply). Recipients without a user or domain are not checked.

The file should be writable by trusted users only. No arguments.

Example ``config/plugins`` line (before ``rcpt_ok``)::

  rcpt_regexp
"""

import re

from qpsmtpd.constants import DECLINED, DONE, LOGDEBUG, LOGWARN, return_code
from qpsmtpd.plugin import Plugin


class RcptRegexp(Plugin):
    def hook_rcpt(self, session, recipient, params):
        if not recipient.host or not recipient.user:
            return DECLINED
        rcpt = f"{recipient.user}@{recipient.host}".lower()
        for pattern, regex, code, name, message in self.parsed_config(
                "rcpt_regexp", self.parse_rules):
            if regex is None:
                if pattern.lower() != rcpt:
                    continue
                self.log(LOGDEBUG, f"String {pattern.lower()} matched {rcpt}, "
                                   f"returning {name}")
            else:
                if not regex.search(rcpt):
                    continue
                self.log(LOGDEBUG, f"RE {pattern} matched {rcpt}, returning {name}")
            if code.is_deny:
                self.log_fail(f"{rcpt} matched {pattern}")
            elif code != DECLINED:
                self.log_pass(f"{rcpt} matched {pattern}")
            return (code, message) if message else code
        return DECLINED

    def parse_rules(self, lines):
        """``[(pattern, regex or None, code, code name, message)]`` from
        config/rcpt_regexp: compiled once per change of the file, not per
        recipient; bad lines are logged then and left out."""
        rules = []
        for line in lines:
            words = line.split(None, 2)
            if not words:
                continue
            pattern = words[0]
            if len(pattern) > 1 and pattern.startswith("/") and pattern.endswith("/"):
                try:
                    regex = re.compile(pattern[1:-1], re.IGNORECASE)
                except re.error as exc:
                    self.log(LOGWARN, f"REGEXP '{pattern[1:-1]}' not valid: {exc}")
                    continue
            else:
                regex = None
            if len(words) < 2:
                self.log(LOGWARN, "rcpt_regexp - no return code")
                continue
            code = return_code(words[1])
            if code is None or code == DONE:
                self.log(LOGWARN, f"rcpt_regexp - '{words[1]}' is not a valid "
                                  "constant, ignoring this line")
                continue
            message = words[2].strip() if len(words) > 2 else ""
            rules.append((pattern, regex, code, words[1], message))
        return tuple(rules)
