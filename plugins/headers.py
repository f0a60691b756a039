"""headers - check the message's header block (RFC 5322).

At ``data_post``:

* every header named in ``require`` must be present with a non-empty
  value: ``We require a valid <Name> header``;
* singular headers (Date From Sender Reply-To To Cc Bcc Message-Id
  In-Reply-To References Subject) may appear only once:
  ``Only one <Name> header allowed. See RFC 5322, Section 3.6``;
* when ``past``/``future`` are set and the Date header can be parsed, it must
  lie within that many days of now: ``The Date header is too far in the
  past`` / ``... future``.

Each problem costs the session one karma point and is logged (LOGINFO
``fail, no From header``, ``fail, too many Subject headers``, ``fail, date
too old (<date>)``, ``fail, date in future (<date>)``). Then ``reject``
decides: ``1`` refuses the message with every problem as one line of the
reply (``552 We require a valid From header``; ``452`` with
``reject_type temp``), ``naughty`` leaves the refusal to the naughty
plugin, ``0`` only logs (``fail, tolerated, ...``). A message without data
gets ``You must send some data first`` (through the same ``reject``
rules); one without header fields of its own is missing its From. An
unparseable Date is not an error (LOGINFO ``skip, date not parseable``).
Immune sessions (relay clients, whitelisted hosts and senders) are not
checked.

Arguments (``key value`` pairs):

  require Name,Name,...   headers that must be present (default ``From``).
  future DAYS             how far in the future Date may be (default: not
                          checked).
  past DAYS               how far in the past Date may be (default: not
                          checked).
  reject 0|1|naughty      default 1.
  reject_type perm|temp|disconnect   default perm.

Differences from the original (its defects, reference §13.1): with
``reject 0`` nothing is deferred to the naughty plugin (the original
deferred every problem regardless, so the sample configuration's ``reject
0`` still ended in ``452 We require a valid From header``); the reply names
the problems instead of the numeric code (``552 901``); an empty value
counts as missing; a Date problem is reported together with the other
problems instead of hiding them.

Example ``config/plugins`` line (the sample configuration's)::

  headers reject 0 reject_type temp require From,Date future 2 past 15
"""

import email.utils
import time

from qpsmtpd.constants import DECLINED
from qpsmtpd.plugin import Plugin, PluginError

SINGULAR = ("Date", "From", "Sender", "Reply-To", "To", "Cc", "Bcc", "Message-Id",
            "In-Reply-To", "References", "Subject")
DAY = 24 * 3600


class Headers(Plugin):
    def register(self, *args):
        self.args = self.parse_args(args, defaults={"reject": "1", "reject_type": "perm"})
        self.required = [name.strip() for name in
                         self.args.get("require", "From").split(",") if name.strip()]
        self.past = self.days("past")
        self.future = self.days("future")

    def days(self, name):
        value = self.args.get(name)
        if value in (None, "", "0"):
            return None
        try:
            return float(value)
        except ValueError:
            raise PluginError(f"headers: {name} must be a number of days, "
                              f"not {value!r}") from None

    def hook_data_post(self, session):
        transaction = session.transaction
        if not transaction.data_size:
            return self.get_reject(session, "You must send some data first", "no data")
        header = transaction.header
        if header is None:
            return self.get_reject(session, "Headers are missing", "missing headers")
        if self.is_immune(session):
            return DECLINED
        problems = self.missing(session, header) + self.duplicated(session, header)
        header_errors = bool(problems)
        date_problem = self.date_out_of_range(session, header)
        if date_problem:
            problems.append(date_problem)
        if not problems:
            self.log_pass()
            return DECLINED
        log_msg = "RFC 5322 validation errors" if header_errors else date_problem
        return self.get_reject(session, "\n".join(problems), log_msg)

    def missing(self, session, header):
        problems = []
        for name in self.required:
            if (header.get(name) or "").strip():
                continue
            self.adjust_karma(session, -1)
            self.log_fail(f"no {name} header")
            problems.append(f"We require a valid {name} header")
        return problems

    def duplicated(self, session, header):
        problems = []
        for name in SINGULAR:
            if header.count(name) <= 1:
                continue
            self.adjust_karma(session, -1)
            self.log_fail(f"too many {name} headers")
            problems.append(f"Only one {name} header allowed. See RFC 5322, Section 3.6")
        return problems

    def date_out_of_range(self, session, header):
        """The Date problem's reply text, or None."""
        if self.past is None and self.future is None:
            return None
        date = header.get("Date")
        if date is None:
            return None
        date = " ".join(date.split())
        sent = _timestamp(date)
        if sent is None:
            self.log_skip(f"date not parseable ({date})")
            return None
        now = time.time()
        if self.past is not None and sent < now - self.past * DAY:
            self.log_fail(f"date too old ({date})")
            self.adjust_karma(session, -1)
            return "The Date header is too far in the past"
        if self.future is not None and sent > now + self.future * DAY:
            self.log_fail(f"date in future ({date})")
            self.adjust_karma(session, -1)
            return "The Date header is too far in the future"
        return None


def _timestamp(date):
    try:
        parsed = email.utils.parsedate_tz(date)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    try:
        return email.utils.mktime_tz(parsed)
    except (OverflowError, ValueError):
        return None
