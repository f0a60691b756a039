"""bogus_bounce - refuse bounces that cannot be real.

A bounce (null envelope sender ``<>``) goes back to exactly one address,
the sender of the mail that bounced, and carries no Return-Path other than
``<>`` (RFC 3834). At ``data_post`` a bounce with more or fewer than one
recipient, or with a non-empty Return-Path header, is a fake (spam sent
with a null sender to get past sender checks):

  ``fail, this bounce message does not have 1 recipient``
  ``a bounce return path must be empty (RFC 3834)``

are the reply texts (the first one's odd ``fail, `` is the original's).
Mail with a real sender is not looked at (LOGINFO ``pass, not a null
sender``).

Arguments: ``reject 0|1|naughty`` and ``reject_type perm|temp|disconnect``
(default ``reject 0``: only log), or one legacy word:

  log        only log (``reject 0``)
  deny       refuse, ``552`` (``reject 1``)
  denysoft   refuse temporarily, ``452`` (``reject 1 reject_type temp``)

The original ignored ``deny`` and ``denysoft`` (only ``reject 1`` enabled
refusing, reference §13.1); here they do what they say.

Log lines (LOGINFO): ``pass, single recipient, empty Return-Path``,
``fail, bogus bounce to: <recipients>``, ``fail, bounce messages must not
have a Return-Path``, or ``fail, tolerated, ...`` with ``reject 0``.

Example ``config/plugins`` line (the sample configuration's)::

  bogus_bounce log
"""

from qpsmtpd.constants import DECLINED
from qpsmtpd.plugin import Plugin, PluginError

LEGACY = {
    "log": {"reject": "0"},
    "deny": {"reject": "1"},
    "denysoft": {"reject": "1", "reject_type": "temp"},
}


class BogusBounce(Plugin):
    def register(self, *args):
        if len(args) == 1:
            action = args[0].lower()
            if action not in LEGACY:
                raise PluginError(f"bogus_bounce: unknown action {args[0]!r} "
                                  "(log, deny or denysoft)")
            self.args = dict(LEGACY[action])
        else:
            self.args = self.parse_args(args, defaults={"reject": "0"})

    def hook_data_post(self, session):
        transaction = session.transaction
        sender = transaction.sender
        if sender is not None and sender.format() != "<>":
            self.log_pass("not a null sender")
            return DECLINED
        recipients = transaction.recipients
        if len(recipients) != 1:
            return self.get_reject(
                session, "fail, this bounce message does not have 1 recipient",
                "bogus bounce to: " + ",".join(r.address() for r in recipients))
        header = transaction.header
        return_path = header.get("Return-Path") if header is not None else None
        if return_path is not None and return_path.strip() not in ("", "<>"):
            return self.get_reject(session, "a bounce return path must be empty (RFC 3834)",
                                   "bounce messages must not have a Return-Path")
        self.log_pass("single recipient, empty Return-Path")
        return DECLINED
