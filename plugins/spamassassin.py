"""spamassassin - score messages with SpamAssassin's spamd.

At ``data_post`` the message, as it will be queued (our Received and
Authentication-Results included) and preceded by an ``X-Envelope-From:
<sender>`` line, is streamed to spamd with the ``HEADERS`` command of the
spamd protocol (SPAMC/1.5, CR LF line endings, the exact Content-length
sent first). It is read from the spool in pieces, never held in memory.
spamd answers with the header block SpamAssassin would write; its
``X-Spam-*`` fields are added at the top of our header, in the order spamd
gave them (``X-Spam-Report`` and ``X-Spam-Prev-Subject`` excepted). With
SpamAssassin's default ``add_header`` lines that is::

  X-Spam-Checker-Version: SpamAssassin 4.0.1 (2024-03-25) on <spamd host>
  X-Spam-Flag: YES                      (spam only)
  X-Spam-Level: ***
  X-Spam-Status: No, score=1.3 required=5.0 tests=RCVD_ILLEGAL_IP
          autolearn=disabled version=4.0.1   (folded with a TAB)

The parsed X-Spam-Status (``is_spam``, ``score``, ``required``,
``tests``, ``autolearn``, ``version`` ...) is kept in the transaction note
``spamassassin`` for later plugins (dspam, logging). Karma: spam -1,
``autolearn=ham`` +1, ``autolearn=spam`` -1.

Arguments (``key value`` pairs):

  reject N | userprefs   reject when the score is at least N; ``userprefs``
                         rejects what the user's own SpamAssassin threshold
                         calls spam. Default: never reject. ``reject_threshold``
                         is the old name.
  reject_type perm|temp|disconnect   default perm: ``552 spam score exceeded
                         threshold`` (temp: 452).
  munge_subject_threshold N   prefix the Subject when the score is at least N
                         (default: never).
  subject_prefix WORD    the prefix; a prefix with spaces goes in the config
                         file ``subject_prefix``. Default ``*** SPAM ***``.
  spamd_socket PATH|HOST:PORT   a unix socket (any value with a ``/``) or a TCP
                         address (``[::1]:783`` for IPv6). Default
                         ``localhost:783``.
  spamd_user NAME        the ``User:`` sent to spamd (whose preferences
                         apply). Default: the user qpsmtpd runs as.
                         ``vpopmail``: a message with one recipient is scored
                         with that recipient's address as the user (per-user
                         preferences); a message with several recipients gets
                         ``X-Spam-User: <spamd_user>, <n> recipients`` instead.
  headers none           add no headers (the note, karma and rejection stay).
  leave_old_headers rename|drop|keep   what happens to X-Spam-* fields the
                         message already had: renamed to ``X-Old-Spam-*``
                         (default), dropped, or kept.
  size_limit BYTES       messages larger than this are not scanned (default
                         500000; spamd is slow on big messages).
  timeout SECONDS        for the whole exchange with spamd (default 30).
  defer_on_error 0|1     when spamd is down, slow or answers nonsense: 0
                         (default) accepts the message unscanned with a log
                         line; 1 answers ``452 Unable to scan for spam`` so the
                         sender retries.

Immune sessions (relay clients, whitelisted hosts and senders) are not
scanned.

Log lines (LOGINFO): ``pass, Ham, 2.3 < 12``, ``fail, Spam, 1000.0 >= 12``,
``pass, Spam, 1000.0`` (no ``reject``), ``skip, too large (<size>)``;
LOGERROR ``error, <why>`` when spamd cannot be used.

Differences from the original: every incoming X-Spam-Flag, -Status,
-Level, -Checker-Version, -Report and -User field is cleaned up (renamed or
dropped), not only the ones spamd returned this time, so a forged
``X-Spam-Flag: YES``/``NO`` never survives next to our verdict; the fields
keep spamd's order (the original's was random); a folded X-Spam-Status is
kept folded with LF; ``munge_subject_threshold`` is the threshold it is
documented to be; a spamd that hangs cannot hold the session beyond
``timeout``; ``defer_on_error`` is new.

Example ``config/plugins`` lines::

  spamassassin reject 12
  spamassassin spamd_socket /run/spamd.sock reject userprefs spamd_user vpopmail
"""

import os
import pwd
import re
import socket
import time

from qpsmtpd.constants import DECLINED, DENYSOFT, LOGDEBUG, LOGINFO
from qpsmtpd.plugin import Plugin, PluginError

DEFAULT_SPAMD = "localhost:783"
DEFAULT_SIZE_LIMIT = 500_000
DEFAULT_TIMEOUT = 30.0
DEFAULT_SUBJECT_PREFIX = "*** SPAM ***"
RESPONSE_LIMIT = 1024 * 1024  # spamd's answer to HEADERS is a header block
# Incoming fields cleaned up even when spamd does not return them this time.
SPAM_FIELDS = ("X-Spam-Checker-Version", "X-Spam-Flag", "X-Spam-Level",
               "X-Spam-Status", "X-Spam-Report", "X-Spam-User")
SKIPPED_FIELDS = ("X-Spam-Report", "X-Spam-Prev-Subject")
_SPAM_LINE = re.compile(r"(True|False|Yes|No)\s*;\s*(-?[\d.]+)\s*/\s*(-?[\d.]+)", re.I)
_FIELD = re.compile(r"(X-Spam-[^:\s]*):(.*)\Z", re.I | re.S)


class SpamdError(Exception):
    """spamd could not be reached, timed out, or answered nonsense."""


class SpamdReply:
    """What spamd answered: the status line's code and message, the
    response headers (lower-case names), and the body (bytes)."""

    def __init__(self, code, message, headers, body):
        self.code = code
        self.message = message
        self.headers = headers
        self.body = body

    @property
    def spam(self):
        """``(is_spam, score, threshold)`` from the ``Spam:`` header, or None."""
        match = _SPAM_LINE.match(self.headers.get("spam", ""))
        if match is None:
            return None
        return (match.group(1).lower() in ("true", "yes"), float(match.group(2)),
                float(match.group(3)))


class SpamdClient:
    """One request per connection to spamd (unix socket or TCP).

    ``address`` is a path (contains ``/``) or ``host:port``. ``timeout`` bounds
    the whole request: connecting, sending and reading.
    """

    def __init__(self, address=DEFAULT_SPAMD, timeout=DEFAULT_TIMEOUT):
        self.address = address
        self.timeout = timeout

    def request(self, command, chunks=(), length=0, user=None):
        """Send ``command`` (CHECK, SYMBOLS, REPORT, REPORT_IFSPAM, HEADERS,
        PROCESS, PING) with a message given as an iterable of byte chunks
        totalling ``length`` bytes (CR LF line endings); returns a SpamdReply.
        Raises SpamdError."""
        deadline = time.monotonic() + self.timeout
        lines = [f"{command} SPAMC/1.5"]
        if command != "PING":
            lines.append(f"Content-length: {length}")
        if user:
            lines.append(f"User: {user}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")
        sock = self._connect(deadline)
        try:
            try:
                self._send(sock, head, deadline)
                sent = 0
                for chunk in chunks:
                    sent += len(chunk)
                    self._send(sock, chunk, deadline)
            except SpamdError:
                # spamd answers at once and closes when it refuses a request;
                # its answer says more than our broken pipe.
                raw = self._read(sock, deadline, quiet=True)
                if raw:
                    parse_reply(raw)
                raise
            if command != "PING" and sent != length:
                raise SpamdError(f"message length changed while sending "
                                 f"({sent} != {length})")
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            return parse_reply(self._read(sock, deadline))
        finally:
            sock.close()

    def ping(self):
        return self.request("PING").message == "PONG"

    # -- the socket -----------------------------------------------------------

    def _connect(self, deadline):
        address = self.address
        try:
            if "/" in address:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(_remaining(deadline))
                try:
                    sock.connect(address)
                except BaseException:
                    sock.close()
                    raise
                return sock
            host, port = split_host_port(address)
            return socket.create_connection((host, port), timeout=_remaining(deadline))
        except TimeoutError as exc:
            raise SpamdError(f"timeout connecting to spamd at {address}") from exc
        except (OSError, ValueError) as exc:
            raise SpamdError(f"cannot connect to spamd at {address}: "
                             f"{getattr(exc, 'strerror', None) or exc}") from exc

    def _send(self, sock, data, deadline):
        try:
            sock.settimeout(_remaining(deadline))
            sock.sendall(data)
        except TimeoutError as exc:
            raise SpamdError(f"timeout sending to spamd at {self.address}") from exc
        except OSError as exc:
            raise SpamdError(f"lost spamd at {self.address} while sending: "
                             f"{exc.strerror or exc}") from exc

    def _read(self, sock, deadline, quiet=False):
        """Everything spamd sends until it closes (bytes); ``quiet``: what
        could be read, never an error."""
        received = []
        size = 0
        try:
            while True:
                sock.settimeout(_remaining(deadline))
                data = sock.recv(65536)
                if not data:
                    break
                size += len(data)
                if size > RESPONSE_LIMIT:
                    raise SpamdError(f"spamd answer longer than {RESPONSE_LIMIT} bytes")
                received.append(data)
        except (TimeoutError, OSError, SpamdError) as exc:
            if quiet:
                return b"".join(received)
            if isinstance(exc, SpamdError):
                raise
            if isinstance(exc, TimeoutError):
                raise SpamdError(f"timeout waiting for spamd at {self.address}") from exc
            raise SpamdError(f"lost spamd at {self.address} while reading: "
                             f"{exc.strerror or exc}") from exc
        return b"".join(received)


def parse_reply(raw):
    """A spamd response (bytes) as a SpamdReply; raises SpamdError."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("utf-8", "replace").split("\r\n")
    status = lines[0].split(None, 2)
    if len(status) < 3 or not status[0].startswith("SPAMD/") or not status[1].isdigit():
        raise SpamdError(f"invalid response from spamd: {lines[0][:200]!r}")
    code, message = int(status[1]), status[2]
    if code != 0:
        raise SpamdError(f"spamd error {code}: {message}")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return SpamdReply(code, message, headers, body)


def split_host_port(address):
    """``host:port``, ``[v6]:port`` or ``host`` (port 783) -> (host, port)."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else "783"
    elif address.count(":") == 1:
        host, port = address.split(":")
    else:
        host, port = address, "783"
    if not port.isdigit():
        port = socket.getservbyname(port, "tcp")
    return host or "localhost", int(port)


def _remaining(deadline):
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    return left


def parse_spam_status(value):
    """X-Spam-Status text -> dict: ``is_spam`` (``Yes``/``No``) and every
    ``key=value`` word (``score``, ``required``, ``tests``, ``autolearn`` ...);
    ``hits`` (SpamAssassin 2) becomes ``score``."""
    # A fold after a comma continues a list (tests=A,B,\n\tC).
    text = re.sub(r",\n[ \t]+", ",", value)
    text = re.sub(r"\s+", " ", text).strip()
    verdict, _, rest = text.partition(" ")
    result = {"is_spam": verdict.rstrip(",")}
    for word in rest.split(" "):
        key, sep, val = word.partition("=")
        if sep:
            result[key] = val
    if "hits" in result and "score" not in result:
        result["score"] = result.pop("hits")
    return result


def spam_fields(body):
    """The ``X-Spam-*`` fields of a header block (bytes, CR LF) in order, as
    ``[name, value]`` with folding kept as LF."""
    fields = []
    current = None
    text = body.decode("utf-8", "surrogateescape").replace("\r\n", "\n")
    for line in text.split("\n"):
        if not line:
            break
        if line[:1] in (" ", "\t"):
            if current is not None:
                current[1] += "\n" + line
            continue
        match = _FIELD.match(line)
        current = [match.group(1), match.group(2).strip()] if match else None
        if current is not None:
            fields.append(current)
    return fields


class SpamAssassin(Plugin):
    def register(self, *args):
        self.args = self.parse_args(args)
        if "reject" not in self.args and "reject_threshold" in self.args:
            self.args["reject"] = self.args["reject_threshold"]
        self.args.setdefault("reject_type", "perm")
        reject = self.args.get("reject")
        if reject not in (None, "userprefs"):
            self.reject_threshold = _number(reject, "reject")
        else:
            self.reject_threshold = None
        munge = self.args.get("munge_subject_threshold")
        self.munge_threshold = _number(munge, "munge_subject_threshold") \
            if munge is not None else None
        self.size_limit = int(_number(self.args.get("size_limit", DEFAULT_SIZE_LIMIT),
                                      "size_limit"))
        self.timeout = _number(self.args.get("timeout", DEFAULT_TIMEOUT), "timeout")
        self.defer_on_error = _yes(self.args.get("defer_on_error", "0"))
        self.leave_old_headers = self.args.get("leave_old_headers", "rename").lower()
        if self.leave_old_headers not in ("rename", "drop", "keep"):
            raise PluginError("spamassassin: leave_old_headers must be rename, "
                              f"drop or keep, not {self.leave_old_headers!r}")
        self.client = SpamdClient(self.args.get("spamd_socket") or DEFAULT_SPAMD,
                                  self.timeout)

    def hook_data_post(self, session):
        transaction = session.transaction
        if self.is_immune(session):
            return DECLINED
        if transaction.data_size > self.size_limit:
            self.log_skip(f"too large ({transaction.data_size})")
            return DECLINED
        user = self.spamd_user(transaction)
        try:
            reply = self.client.request("HEADERS", *self.message(transaction), user=user)
        except SpamdError as exc:
            self.log_error(str(exc))
            if self.defer_on_error:
                return DENYSOFT, "Unable to scan for spam"
            return DECLINED
        fields = spam_fields(reply.body)
        results = self.results(reply, fields)
        transaction.notes["spamassassin"] = results
        if self.args.get("headers", "").lower() != "none":
            self.add_headers(transaction, fields, user)
        self.munge_subject(session, results)
        return self.verdict(session, results)

    # -- talking to spamd ---------------------------------------------------------

    def spamd_user(self, transaction):
        """The ``User:`` for spamd (see ``spamd_user`` in the manual)."""
        user = self.args.get("spamd_user") or _process_user()
        if user == "vpopmail" and len(transaction.recipients) == 1:
            return transaction.recipients[0].address()
        return user

    @staticmethod
    def message(transaction):
        """``(chunks, length)``: the message for spamd with CR LF endings,
        preceded by X-Envelope-From; the length is counted in a first pass
        over the spool so spamd gets it before the message."""
        sender = transaction.sender.format() if transaction.sender is not None else "<>"
        head = (f"X-Envelope-From: {sender}\n".encode("utf-8", "surrogateescape")
                + (transaction.header.as_bytes() if transaction.header is not None
                   else b"")).replace(b"\n", b"\r\n")
        length = len(head)
        with transaction.body_fh() as body:
            while True:
                chunk = body.read(256 * 1024)
                if not chunk:
                    break
                length += len(chunk) + chunk.count(b"\n")

        def chunks():
            yield head
            with transaction.body_fh() as body:
                while True:
                    chunk = body.read(256 * 1024)
                    if not chunk:
                        return
                    yield chunk.replace(b"\n", b"\r\n")

        return chunks(), length

    @staticmethod
    def results(reply, fields):
        """The note: X-Spam-Status parsed, completed from the ``Spam:`` line."""
        results = {}
        for name, value in fields:
            if name.lower() == "x-spam-status":
                results = parse_spam_status(value)
                break
        spam = reply.spam
        if spam is not None:
            is_spam, score, threshold = spam
            results.setdefault("is_spam", "Yes" if is_spam else "No")
            results.setdefault("score", f"{score:.1f}")
            results.setdefault("required", f"{threshold:.1f}")
        return results

    # -- the message's header -------------------------------------------------------

    def add_headers(self, transaction, fields, user):
        header = transaction.header
        for name in SPAM_FIELDS:
            self.clean_old(header, name)
        kept = [(name, value) for name, value in fields
                if name not in SKIPPED_FIELDS]
        for name, _ in kept:
            self.clean_old(header, name)
        recipients = len(transaction.recipients)
        if recipients > 1:
            header.add("X-Spam-User", f"{user}, {recipients} recipients", 0)
        for name, value in reversed(kept):
            header.add(name, value, 0)

    def clean_old(self, header, name):
        """Deal with fields of ``name`` the message arrived with: rename them
        in place, drop them, or keep them."""
        if self.leave_old_headers == "keep" or not header.count(name):
            return
        if self.leave_old_headers == "drop":
            header.delete(name)
            return
        renamed = "X-Old-" + name[2:] if name[:2].lower() == "x-" else "Old-" + name
        for field in header.fields:
            if field[0].lower() == name.lower():
                field[0] = renamed

    def munge_subject(self, session, results):
        if self.munge_threshold is None:
            return
        score = _float(results.get("score"))
        if score is None or score < self.munge_threshold:
            return
        prefix = (self.args.get("subject_prefix") or self.config("subject_prefix")
                  or DEFAULT_SUBJECT_PREFIX)
        header = session.transaction.header
        subject = header.get("Subject")
        header.replace("Subject", f"{prefix} {subject}" if subject else prefix)
        self.log(LOGDEBUG, f"subject munged with {prefix!r}")

    # -- the verdict ------------------------------------------------------------------

    def verdict(self, session, results):
        score_text = results.get("score", "?")
        score = _float(score_text)
        kind = "Spam" if str(results.get("is_spam", "")).lower() in ("yes", "true") else "Ham"
        if kind == "Spam":
            self.adjust_karma(session, -1)
        autolearn = results.get("autolearn")
        if autolearn == "ham":
            self.adjust_karma(session, 1)
        elif autolearn == "spam":
            self.adjust_karma(session, -1)
        learn = f", learn={autolearn}" if autolearn in ("ham", "spam") else ""
        if score is None:
            self.log_error("no score in the spamd answer")
            return DECLINED
        if self.args.get("reject") == "userprefs":
            threshold = _float(results.get("required"))
        else:
            threshold = self.reject_threshold
        if threshold is None:
            self.log_pass(f"{kind}, {score_text}{learn}")
            return DECLINED
        shown = _shown(threshold)
        if score < threshold:
            self.log_pass(f"{kind}, {score_text} < {shown}{learn}")
            return DECLINED
        self.log(LOGINFO, f"fail, {kind}, {score_text} >= {shown}{learn}")
        return self.get_reject_type(), "spam score exceeded threshold"


def _number(value, name):
    try:
        return float(value)
    except (TypeError, ValueError):
        raise PluginError(f"spamassassin: {name} must be a number, not {value!r}") from None


def _float(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _shown(number):
    return str(int(number)) if float(number).is_integer() else str(number)


def _yes(value):
    return str(value).strip().lower() in ("1", "yes", "true", "on")


def _process_user():
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())
