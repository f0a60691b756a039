"""karma - remember how each sending IP behaved; refuse the naughty ones.

Other plugins rate a connection with ``adjust_karma(+n/-n)`` (whitelist +5,
dnsbl -1, earlytalker -1, SPF/DKIM/fcrdns +-1, ...). karma adds its own
evidence, keeps the score of the session in the connection note ``karma``,
and when the connection ends records a verdict for the remote IP:

* score <= -strikes, or the connection was flagged naughty (a plugin
  deferred a rejection to the ``naughty`` plugin): one more *naughty*
  connection. When the IP's history (nice - naughty) is then <= -negative,
  it goes to the **penalty box** for ``penalty_days``; an IP that has never
  sent a nice message and whose history is below -5 gets a day more per
  naughty connection ("penalty box bonus");
* score >= strikes: one more *nice* connection;
* otherwise: neutral (only the connection count grows).

A session whose score stays 0 and that nobody flagged leaves no record.
Relay clients, whitelisted hosts and whitelisted senders are never recorded.

While an IP sits in the penalty box its connections are refused with
``You were naughty. You cannot connect for <days> more days.`` - by default
deferred to the ``naughty`` plugin (``reject naughty``), so a roaming user
may still authenticate; ``reject 1`` refuses at once: ``550 You were
naughty. ...`` and the connection is closed. Those refused connections
count as connections, not as new naughty ones.

Also:

* pre-connection (forkserver): the note ``karma_history`` (nice - naughty,
  0 when unknown) for ``hosts_allow``'s per-IP limit; a history above 10 is
  worth +1;
* MAIL/RCPT: a command argument not starting exactly with ``FROM:<`` /
  ``TO:<`` (a space after the colon, missing brackets) costs 2; a sender
  domain ending in a TLD of ``config/karma_tlds`` (``tld:score`` lines, e.g.
  ``biz:-2``) adds that score;
* RCPT: a sender with no good history and no positive score this session
  may give one recipient per message; the second gets
  ``550 too many recipients for karma <k> (h: <h>)``;
* DATA and after DATA: a session score below -4 is refused with
  ``very bad karma: <k>`` (through ``reject``), unless the session is
  already flagged naughty (then ``naughty`` does it);
* ``add_header 1``: the message gets ``X-Karma: <score> (history <h>)``.

Arguments (defaults):

  negative 1          history at or below -negative after a naughty
                      connection sends the IP to the penalty box
  strikes 3           score needed for a nice / naughty verdict
  penalty_days 1      days in the penalty box (decimals allowed)
  penalty_box 1       0: never refuse penalised IPs (history is still kept)
  reject naughty      naughty (defer to the naughty plugin), 1 or connect
                      (refuse at once), 0 (log only)
  reject_type disconnect
  store <url>         where the history lives (``sqlite:<path>`` or
                      ``redis://host:port/db``); default: ``db_dir``, else
                      ``config/store``, else ``var/db/qpsmtpd.sqlite``
  db_dir <dir>        qpsmtpd's argument: ``<dir>/qpsmtpd.sqlite``
  add_header 0
  loglevel

Storage: one entry per IP, key = the address as an unsigned integer
(``192.0.2.1`` -> ``3221225985``), value
``<penalty start epoch>:<naughty>:<nice>:<connects>`` - qpsmtpd's format.
Inspect and edit it with ``python3 -m qpsmtpd.karma_tool`` (list, search,
capture, release, prune, import from qpsmtpd).

Log lines (LOGINFO): ``pass, no record``, ``pass, no penalty (<n> naughty,
<n> nice, <n> connects)``, ``pass, penalty expired (...)``, ``fail[,
NAUGHTY], <n> naughty, <n> nice, <n> connects`` (penalty box),
``negative[, sent to penalty box[, penalty box bonus!]], (msg: <k>, his:
<h>)``, ``positive, (...)``, ``neutral, (...)``; ``error, <why>`` when the
store cannot be reached (the mail then passes karma unhindered).

Differences from qpsmtpd 1.0, on purpose (the upstream fix of 2026, #338,
plus two of ours):

* naughty connections are counted (1.0 never incremented the counter, so
  the penalty box and its bonus were unreachable for any IP with one nice
  connection), also when the score stayed above -strikes but a plugin
  flagged the connection naughty; immune sessions are not recorded;
* a connection refused because of the penalty box is counted once, at
  connect, and does not restart the penalty (with #338 alone, every retry
  of a boxed MTA would extend its penalty forever);
* the score given by plugins listed before karma is kept (1.0 reset it to
  0 at connect); the +1 for a history above 10 is given at connect only;
* ``penalty_box 0`` and ``add_header`` are ours; ``nfslock`` is accepted
  and ignored (SQLite and Redis need no lock files).

Example ``config/plugins`` lines (karma early, naughty after the plugins
that defer to it)::

  karma penalty_days 1 reject naughty
  naughty reject mail
"""

from qpsmtpd.constants import DECLINED, DENY, LOGDEBUG, LOGINFO
from qpsmtpd.plugin import Plugin, PluginError
from qpsmtpd.store import StoreError, ip_key, now, parse_record

DAY = 86400


class Karma(Plugin):
    def register(self, *args):
        self.args = self.parse_args(args, {
            "negative": "1", "strikes": "3", "penalty_days": "1",
            "penalty_box": "1", "reject": "naughty", "reject_type": "disconnect",
            "add_header": "0"})
        try:
            self.negative = float(self.args["negative"]) or 1
            self.strikes = float(self.args["strikes"]) or 3
            self.penalty_days = float(self.args["penalty_days"]) or 1
        except ValueError as exc:
            raise PluginError(f"karma: bad number in arguments: {exc}") from exc
        self.penalty_box = self.args["penalty_box"] not in ("0", "")
        self.add_header = self.args["add_header"] not in ("0", "")
        self.store = self.open_store("karma")

    # -- hooks, in the order they fire ------------------------------------------

    def hook_pre_connection(self, session, info):
        notes = session.connection.notes
        notes["karma_history"] = 0
        record = self.read_record(info.get("remote_ip"))
        if record is not None:
            self.history(session, record, bonus=False)
            # connect uses it rather than reading the store again ((): none)
            notes["karma_record"] = () if record is NO_RECORD else tuple(record)
        return DECLINED

    def hook_connect(self, session):
        notes = session.connection.notes
        notes.setdefault("karma", 0)
        record = notes.pop("karma_record", None)     # read a moment ago by pre-connection
        if self.is_immune(session):
            return DECLINED
        key = ip_key(session.connection.remote_ip)
        if record is not None:
            record = record or NO_RECORD
        else:
            record = self.read_record(session.connection.remote_ip)
        if record is None:
            return DECLINED
        if record is NO_RECORD:
            self.log_pass("no record")
            return DECLINED
        penalty_start = record[0]
        self.history(session, record)
        summary = _summary(record)
        if not penalty_start or not self.penalty_box:
            self.log_pass(f"no penalty ({summary})")
            return DECLINED
        days_old = (now() - penalty_start) / DAY
        if days_old >= self.penalty_days:
            self.log_pass(f"penalty expired ({summary})")
            return DECLINED
        try:
            record = parse_record(self.store.update(key, _count_connect))
        except StoreError as exc:
            self.log_error(f"store: {exc}")
        left = self.penalty_days - days_old
        message = f"You were naughty. You cannot connect for {left:.2f} more days."
        if str(self.args["reject"]) not in ("0", ""):
            notes["karma_penalty_box"] = True
        return self.get_reject(session, message, _summary(record))

    def hook_mail(self, session, sender, params):
        self.check_envelope(session, "envelope_from", "FROM:<")
        host = (sender.host or "").lower() if sender is not None else ""
        if not host:
            return DECLINED
        for line in self.config_list("karma_tlds"):
            tld, _, score = line.partition(":")
            tld = tld.strip().lstrip(".").lower()
            try:
                score = int(score.strip())
            except ValueError:
                continue
            if tld and score and host.endswith("." + tld):
                self.log(LOGINFO, f"adjusting karma for .{tld} envelope sender")
                self.adjust_karma(session, score)
        return DECLINED

    def hook_rcpt(self, session, recipient, params):
        self.check_envelope(session, "envelope_rcpt", "TO:<")
        notes = session.connection.notes
        notes["recipient_count"] = (notes.get("recipient_count") or 0) + 1
        if self.is_immune(session):
            return DECLINED
        count = len(session.transaction.recipients)
        if not count:
            return DECLINED
        self.log(LOGINFO, f"recipients t: {count} ({recipient.format()})")
        history = notes.get("karma_history") or 0
        if history > 0:
            self.log(LOGINFO, "info, good history")
            return DECLINED
        karma = notes.get("karma") or 0
        if karma > 0:
            self.log(LOGINFO, "info, good connection")
            return DECLINED
        self.log_fail(f"too many recipients for karma {karma} (h: {history})")
        return DENY, f"too many recipients for karma {karma} (h: {history})"

    def hook_data(self, session):
        if self.is_immune(session) or self.is_naughty(session):
            return DECLINED
        karma = session.connection.notes.get("karma") or 0
        if karma < -4:
            return self.get_reject(session, f"very bad karma: {karma}")
        return DECLINED

    def hook_data_post(self, session):
        result = self.hook_data(session)
        if result == DECLINED and self.add_header and session.transaction.header is not None:
            notes = session.connection.notes
            header = session.transaction.header
            header.delete("X-Karma")
            header.add("X-Karma", f"{notes.get('karma') or 0} "
                                  f"(history {notes.get('karma_history') or 0})", 0)
        return result

    def hook_disconnect(self, session):
        notes = session.connection.notes
        karma = notes.get("karma") or 0
        flagged = bool(notes.get("naughty"))
        if notes.get("karma_recorded"):
            return DECLINED
        notes["karma_recorded"] = True
        if "karma_penalty_box" in notes:
            self.log(LOGDEBUG, "skip, refused for the penalty box, counted at connect")
            return DECLINED
        if not karma and not flagged:
            self.log(LOGDEBUG, "no karma")
            return DECLINED
        if self.is_immune(session):
            return DECLINED
        key = ip_key(session.connection.remote_ip)
        if key is None:
            self.log_skip("unable to get DB key")
            return DECLINED
        outcome = {}

        def record_verdict(value):
            penalty_start, naughty, nice, connects = parse_record(value)
            history = nice - naughty
            if karma <= -self.strikes or flagged:
                naughty += 1
                history = nice - naughty
                if history <= -self.negative:
                    if nice == 0 and history < -5:
                        penalty_start = int(now()) + abs(history) * DAY
                        verdict = "negative, sent to penalty box, penalty box bonus!"
                    else:
                        penalty_start = int(now())
                        verdict = "negative, sent to penalty box"
                else:
                    verdict = "negative"
            elif karma >= self.strikes:
                nice += 1
                history = nice - naughty
                verdict = "positive"
            else:
                verdict = "neutral"
            outcome.update(verdict=verdict, history=history)
            return f"{penalty_start}:{naughty}:{nice}:{connects + 1}"

        try:
            self.store.update(key, record_verdict)
        except StoreError as exc:
            self.log_error(f"store: {exc}")
            return DECLINED
        self.log(LOGINFO, f"{outcome['verdict']}, (msg: {karma}, his: {outcome['history']})")
        return DECLINED

    # -- helpers ---------------------------------------------------------------------

    def read_record(self, remote_ip):
        """(penalty_start, naughty, nice, connects); ``NO_RECORD`` when the
        IP has none; None (logged) when the store or the key fails."""
        key = ip_key(remote_ip)
        if key is None:
            self.log_skip("unable to get DB key")
            return None
        try:
            value = self.store.get(key)
        except StoreError as exc:
            self.log_error(f"store: {exc}")
            return None
        return parse_record(value) if value else NO_RECORD

    def history(self, session, record, bonus=True):
        """Set ``karma_history`` from a record; +1 karma above 10."""
        _, naughty, nice, _ = record
        if not naughty and not nice:
            return 0
        history = nice - naughty
        session.connection.notes["karma_history"] = history
        if history > 10 and bonus:
            self.adjust_karma(session, 1)
        return history

    def check_envelope(self, session, note, prefix):
        """-2 for a MAIL/RCPT argument that does not start with ``prefix``."""
        argument = session.connection.notes.get(note) or ""
        if argument[:len(prefix)].upper() != prefix:
            self.log(LOGINFO, f"illegal envelope address format: {argument}")
            self.adjust_karma(session, -2)


NO_RECORD = (0, 0, 0, 0)   # compared by identity


def _summary(record):
    _, naughty, nice, connects = record
    return f"{naughty} naughty, {nice} nice, {connects} connects"


def _count_connect(value):
    penalty_start, naughty, nice, connects = parse_record(value)
    return f"{penalty_start}:{naughty}:{nice}:{connects + 1}"

