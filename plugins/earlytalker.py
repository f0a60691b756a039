"""earlytalker - refuse clients that talk before the greeting.

A real MTA waits for the ``220`` greeting before it sends EHLO, and for the
``354`` before it sends the message. Spam software often pipelines the
whole conversation at once. earlytalker holds the greeting back for
``wait`` seconds and watches whether the client sends anything meanwhile
(``check-at CONNECT``); with ``check-at DATA`` it also waits ``wait``
seconds after the DATA command, before the ``354``.

A client that spoke early costs 1 karma point, gets the connection note
``earlytalker`` = 1, and (with ``reject 1``, the default) is refused::

  550 Connecting host started transmitting before SMTP greeting

and the connection is closed (at DATA: ``554 ...``, and the connection is
closed too: what the client sent ahead would otherwise be read as
commands). ``reject_type temp`` answers 450/451 instead; ``reject naughty``
defers the refusal to the ``naughty`` plugin; ``reject 0`` only logs.
With ``defer-reject 1`` the greeting is sent as usual and the refusal comes
at MAIL FROM (``550 ...``).

Skipped (the greeting is not delayed) for relay clients, whitelisted hosts
and senders, and for IPs with a good history (``karma_history`` > 5, from
the karma plugin listed before this one). Another plugin can set the
connection note ``earlytalker_wait`` (seconds) to change the wait for one
connection.

Arguments (defaults):

  wait 1                 seconds to wait (decimals allowed)
  reject 1               1, 0 or naughty
  reject_type perm       perm, temp, disconnect, temp_disconnect
  defer-reject 0         1: greet anyway, refuse at MAIL
  check-at CONNECT       CONNECT or DATA; may be given twice for both
  action deny|denysoft|log   legacy form of reject (deny* = 1, else 0)
  loglevel

Log lines (LOGINFO): ``pass, not spontaneous``, ``skip, karma <h>``,
``fail, remote started talking before we said hello`` (``fail, NAUGHTY,
...`` / ``fail, tolerated, ...``).

Differences from qpsmtpd 1.0: the karma point is taken once per connection
(1.0 took another one at every MAIL with ``defer-reject``); a refusal at
DATA always closes the connection (1.0 went on reading what the client had
sent ahead as commands). As in
1.0's code (its manual says otherwise), the default reject_type is perm and
the per-connection override is the note ``earlytalker_wait``.

Example ``config/plugins`` line::

  earlytalker wait 1 reject 1
"""

from qpsmtpd.constants import (
    DECLINED, DENY, DENY_DISCONNECT, DENYSOFT, DENYSOFT_DISCONNECT)
from qpsmtpd.plugin import Plugin, PluginError

MESSAGE = "Connecting host started transmitting before SMTP greeting"
LOG_MESSAGE = "remote started talking before we said hello"
DRAIN_LIMIT = 65536
DRAIN_PAUSE = 0.05


class Earlytalker(Plugin):
    def register(self, *args):
        if len(args) % 2:
            raise PluginError(f"earlytalker: unrecognized/mismatched arguments: "
                              f"{' '.join(args)}")
        self.check_at = {value.upper() for key, value in zip(args[0::2], args[1::2])
                         if key.lower() == "check-at"} or {"CONNECT"}
        self.args = self.parse_args(args, {"wait": "1"})
        if "action" in self.args and "reject" not in self.args:
            self.args["reject"] = "1" if self.args["action"].lower().startswith("deny") else "0"
        if "reject_type" not in self.args:
            self.args["reject_type"] = (
                "temp" if self.args.get("action", "").lower() == "denysoft" else "perm")
        self.args.setdefault("reject", "1")
        try:
            self.wait = float(self.args["wait"])
        except ValueError as exc:
            raise PluginError(f"earlytalker: wait must be a number of seconds: "
                              f"{self.args['wait']!r}") from exc
        self.defer = self.args.get("defer-reject", "0") not in ("0", "")

    # -- hooks, in the order they fire ---------------------------------------------

    def hook_connect(self, session):
        if "CONNECT" not in self.check_at or self.is_immune(session):
            return DECLINED
        history = session.connection.notes.get("karma_history")
        if history is not None and history > 5:
            self.log_skip(f"karma {history}")
            return DECLINED
        if not session.io.wait_readable(self.wait_length(session)):
            self.log_pass("not spontaneous")
            return DECLINED
        if self.defer:
            self.mark(session)
            self.log_fail(f"{LOG_MESSAGE}, refusing at MAIL")
            return DECLINED
        result = self.refuse(session)
        if result != DECLINED:
            drain(session.io)
        return result

    def hook_mail(self, session, sender, params):
        if self.defer and session.connection.notes.get("earlytalker"):
            return self.refuse(session)
        return DECLINED

    def hook_data(self, session):
        # The data hook runs before the 354 reply: anything the client sends
        # now was sent before it was invited to.
        if "DATA" not in self.check_at or self.is_immune(session):
            return DECLINED
        if not session.io.wait_readable(self.wait_length(session)):
            self.log_pass("not spontaneous")
            return DECLINED
        result = self.refuse(session)
        # What the client sent ahead would otherwise be read as commands.
        code = result[0] if isinstance(result, tuple) else result
        closing = {DENY: DENY_DISCONNECT, DENYSOFT: DENYSOFT_DISCONNECT}.get(code)
        if code != DECLINED:
            drain(session.io)
        if closing is not None:
            return (closing,) + tuple(result[1:]) if isinstance(result, tuple) else closing
        return result

    # -- helpers --------------------------------------------------------------------

    def wait_length(self, session):
        override = session.connection.notes.get("earlytalker_wait")
        if override:
            try:
                return float(override)
            except (TypeError, ValueError):
                pass
        return self.wait

    def mark(self, session):
        notes = session.connection.notes
        if not notes.get("earlytalker"):
            notes["earlytalker"] = 1
            self.adjust_karma(session, -1)

    def refuse(self, session):
        self.mark(session)
        return self.get_reject(session, MESSAGE, LOG_MESSAGE)


def drain(io, limit=DRAIN_LIMIT):
    """Read and drop what the client already sent (up to ``limit`` bytes,
    never waiting), so closing the connection right after the refusal does
    not turn into a TCP reset that destroys the reply before it is read."""
    timeout = io.timeout
    io.set_timeout(DRAIN_PAUSE)
    dropped = 0
    try:
        while dropped < limit and io.wait_readable(0):
            piece = io.read_line(limit)
            if not piece:
                break
            dropped += len(piece)
    except (TimeoutError, OSError):
        pass
    finally:
        io.discard_pending()
        io.set_timeout(timeout)

