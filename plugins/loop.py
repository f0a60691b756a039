"""loop - refuse messages that have travelled too many hops.

Counts the ``Received`` and ``Delivered-To`` header fields at
``data_post`` (our own Received field included, as in qmail-smtpd and the
original); at the limit or above the message is refused with
``552 Too many hops (#5.4.6)`` (after EHLO ``552 5.4.6 Too many hops
(#5.4.6)``), which stops a mail loop from going round for ever.

One optional positional argument: the maximum number of hops (default 100,
qmail-smtpd's). A value that is not a whole number logs LOGWARN ``Invalid
max_hops value -- using default``; further arguments log LOGWARN
``Ignoring additional arguments``.

Log lines (LOGINFO): ``pass, <n> hops``, ``fail, <n> hops (max <max>)``.

Example ``config/plugins`` line::

  loop 50
"""

from qpsmtpd.constants import DECLINED, DENY, LOGWARN
from qpsmtpd.plugin import Plugin

DEFAULT_MAX_HOPS = 100


class Loop(Plugin):
    def register(self, *args):
        self.max_hops = DEFAULT_MAX_HOPS
        if args and args[0]:
            if args[0].isdigit() and int(args[0]) > 0:
                self.max_hops = int(args[0])
            else:
                self.log(LOGWARN, "Invalid max_hops value -- using default")
        if len(args) > 1:
            self.log(LOGWARN, "Ignoring additional arguments")

    def hook_data_post(self, session):
        header = session.transaction.header
        hops = header.count("Received") + header.count("Delivered-To") \
            if header is not None else 0
        if hops >= self.max_hops:
            self.log_fail(f"{hops} hops (max {self.max_hops})")
            return DENY, "Too many hops (#5.4.6)"
        self.log_pass(f"{hops} hops")
        return DECLINED
