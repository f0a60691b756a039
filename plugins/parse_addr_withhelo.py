"""parse_addr_withhelo - strict RFC 821 parsing of MAIL and RCPT after HELO.

RFC 821 knows no ESMTP parameters: a client that greeted with ``HELO``
(not ``EHLO``) has no business sending ``MAIL FROM:<a@b> SIZE=1000``. For
HELO sessions this plugin replaces the built-in MAIL/RCPT argument parser
with a strict one; EHLO sessions (and sessions without a greeting) keep the
built-in parser.

The strict parser takes ``FROM:``/``TO:`` (any case, spaces after the colon
allowed), then either a bracketed path or a bare address:

* anything after the path ->
  ``501 No parameters allowed in MAIL`` / ``501 No parameters allowed in RCPT``;
* a missing ``FROM:``/``TO:`` -> ``501 Syntax error in command``;
* ``MAIL FROM:`` with nothing after it -> the null sender ``<>``;
* text without ``@`` -> ``501 Could not parse your MAIL FROM command`` /
  ``501 Could not parse your RCPT TO command`` (a bare ``postmaster`` or
  ``abuse`` recipient passes on as written; the original's code fell off
  the end of the function there).

A bare address (no brackets) is handed on as written; the core then wants
brackets, so load ``dont_require_anglebrackets`` too to accept those.

No arguments, no config files. LOGDEBUG ``_parse() cmd=[<verb>], line=[<text>]``.

Example ``config/plugins`` line::

  parse_addr_withhelo
"""

import re

from qpsmtpd.constants import DECLINED, DENY, LOGDEBUG, OK
from qpsmtpd.plugin import Plugin

_BRACKETED = re.compile(r"(<.*>)\s*")
_PARAMETER_AFTER_ADDRESS = re.compile(r"@\S+\s+\S")


class ParseAddrWithhelo(Plugin):
    def hook_mail_parse(self, session, rest):
        return self._parser_for(session)

    def hook_rcpt_parse(self, session, rest):
        return self._parser_for(session)

    def _parser_for(self, session):
        if session.connection.hello == "helo":
            return OK, self.parse
        return DECLINED

    def parse(self, session, verb, line):
        """``(OK, path, {})`` or ``(DENY, message)`` for one MAIL/RCPT line."""
        self.log(LOGDEBUG, f"_parse() cmd=[{verb}], line=[{line}]")
        keyword = "from" if verb == "mail" else "to"
        match = re.match(keyword + r":\s*", line, re.IGNORECASE)
        if match is None:
            return DENY, "Syntax error in command"
        line = line[match.end():]

        bracketed = _BRACKETED.match(line)
        if bracketed:
            if line[bracketed.end():]:
                return DENY, f"No parameters allowed in {verb.upper()}"
            return OK, bracketed.group(1), {}

        line = line.rstrip()
        if "@" in line:
            if _PARAMETER_AFTER_ADDRESS.search(line):
                return DENY, f"No parameters allowed in {verb.upper()}"
            return OK, line, {}
        if verb == "mail":
            if not line:
                return OK, "<>", {}
            return DENY, "Could not parse your MAIL FROM command"
        if line.lower() in ("postmaster", "abuse"):
            return OK, line, {}
        return DENY, "Could not parse your RCPT TO command"
