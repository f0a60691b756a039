"""virus/klez_filter - refuse the Klez worm without a virus scanner.

Klez mails carry a Windows executable as an audio/ or application/
attachment. For messages of at least 60000 bytes, the first 41 lines of the
body (the empty line after the header counts as the first) are read from
the spool; a ``Content-type:`` line naming ``audio`` or ``application``
followed later by a line starting with the base64 text of a PE header
(``TVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQA``) gets ``552 Klez Virus Detected``.

No arguments. Log lines (LOGINFO): ``fail, Klez signature``, ``pass``;
``skip, too small (<size>)`` at LOGDEBUG.

Example ``config/plugins`` line::

  virus/klez_filter
"""

import re

from qpsmtpd.constants import DECLINED, DENY, LOGDEBUG
from qpsmtpd.plugin import Plugin

MIN_SIZE = 60_000
LINES = 41
LINE_LIMIT = 4096  # only the start of a line matters
_ATTACHMENT_TYPE = re.compile(rb"Content-type:.*(?:audio|application)", re.I)
_PE_BASE64 = b"TVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQA"


class KlezFilter(Plugin):
    def hook_data_post(self, session):
        transaction = session.transaction
        if transaction.data_size < MIN_SIZE:
            self.log(LOGDEBUG, f"skip, too small ({transaction.data_size})")
            return DECLINED
        seen_attachment = False
        with transaction.body_fh() as body:
            for _ in range(LINES):
                line = body.readline(LINE_LIMIT)
                if not line:
                    break
                rest = line
                while rest and not rest.endswith(b"\n"):
                    rest = body.readline(LINE_LIMIT)  # a long line's tail
                if _ATTACHMENT_TYPE.match(line):
                    seen_attachment = True
                elif seen_attachment and line.startswith(_PE_BASE64):
                    self.log_fail("Klez signature")
                    return DENY, "Klez Virus Detected"
        self.log_pass()
        return DECLINED
