"""queue/smtp-forward — relay accepted mail to another SMTP server.

For each message: connect to the server, ``EHLO`` (``HELO`` if EHLO is
refused) with ``config/me``, ``MAIL FROM`` with the envelope sender (the
null sender too; ``SIZE=`` and ``BODY=8BITMIME`` when the server offers
them — ``SIZE`` counts LF line endings, a slight underestimate that can
only let the server refuse later, never wrongly early), one ``RCPT TO``
per recipient, then ``DATA``: the message as queued (header fields added by
this server first) is streamed from the spool with CR LF line endings and
dot-stuffing, never held in memory whole. The client gets ``250`` only
after the server accepted the message.

Arguments::

    queue/smtp-forward <host> [<port>] [xclient] [timeout <seconds>]

``<host>``
    Host name or IP address of the server (required).

``<port>``
    Default 25.

``xclient``
    When the server advertises Postfix's ``XCLIENT``, first pass it the
    client's details — ``NAME`` (the client's host name, ``[UNAVAILABLE]``
    when it has none), ``ADDR``, ``PORT``, ``HELO``, ``PROTO``, those the
    server lists — then say ``EHLO`` again, so the server's own checks and
    logs see the real client. A refused XCLIENT is a temporary failure
    (the server would otherwise take the mail as ours).

``timeout <seconds>``
    Limit for connecting and for each command reply (default 60, as in
    qpsmtpd). The reply to the final dot gets at least 600 seconds, the
    time RFC 5321 4.5.3.2.6 gives, so a slow content filter downstream does
    not turn an accepted message into a retried duplicate.

Replies the client sees:

* ``250 queued as <last word of the server's reply>``;
* ``552 Unable to queue message (<the server's reply>)`` when the server
  refused for good: a 5xx to MAIL FROM, to every recipient, to DATA or to
  the final dot. The sender's MTA bounces at once with the server's reason;
* ``451 Unable to queue message (<reason>)`` for everything else: the
  server is down or unreachable (connection refused, timeout, no greeting),
  it answered 4xx anywhere, or it refused only some of the recipients —
  those were accepted from the client already and cannot be refused one by
  one any more, so the whole message waits at the sender. The server's
  address stays out of the reply; the log has it (``error, ...``).

Temporary failures are returned as ``DECLINED`` (qpsmtpd's code), so a later
queue plugin in ``config/plugins`` may still take the message.

Differences from qpsmtpd: a connection failure is an ordinary 451 with the
reason (qpsmtpd died and answered ``451 Queuing declined or disabled``);
permanent downstream refusals are ``552`` instead of a 451 retried until the
sender gives up; a failed QUIT after the server accepted the message no
longer turns the accepted message into a 451 (and a duplicate); the
message is streamed; ``SIZE``/``BODY`` are passed on; ``timeout``.

Example ``config/plugins`` lines::

    queue/smtp-forward 10.2.2.2
    queue/smtp-forward mail.internal.example 10025 xclient
"""

import re
import smtplib
import socket

from qpsmtpd.constants import DECLINED, DENY, LOGDEBUG, LOGINFO, LOGWARN, OK
from qpsmtpd.plugin import Plugin, PluginError

DEFAULT_TIMEOUT = 60
DATA_END_TIMEOUT = 600
QUIT_TIMEOUT = 10  # the outcome is known by then; do not keep the client waiting
XCLIENT_ATTRIBUTES = ("NAME", "ADDR", "PORT", "HELO", "PROTO")


class Refused(Exception):
    """The server said no; ``permanent`` when that was a 5xx; ``esc`` its
    enhanced status code, if it gave one."""

    def __init__(self, text, permanent=False, esc=None):
        super().__init__(text)
        self.permanent = permanent
        self.esc = esc


class SmtpForward(Plugin):
    def register(self, *args):
        if not args:
            raise PluginError("No SMTP server specified in smtp-forward config")
        host, rest = args[0], list(args[1:])
        if not re.fullmatch(r"[\w.-]+|\[?[0-9A-Fa-f:.]+\]?", host):
            raise PluginError(f"Bad data in smtp server: {host}")
        self.host = host.strip("[]")
        self.port = 25
        if rest and rest[0].isdigit():
            self.port = int(rest.pop(0))
            if not 0 < self.port < 65536:
                raise PluginError(f"Bad port for smtp server: {self.port}")
        self.xclient = False
        self.timeout = DEFAULT_TIMEOUT
        while rest:
            word = rest.pop(0)
            if word.lower() == "xclient":
                self.xclient = True
            elif word == "timeout" and rest:
                try:
                    self.timeout = float(rest.pop(0))
                except ValueError:
                    raise PluginError("queue/smtp-forward: timeout is not a number") from None
            else:
                self.log(LOGWARN, f"WARNING: Ignoring additional arguments: {word}")

    def hook_queue(self, session):
        where = f"{self.host}:{self.port}"
        self.log(LOGINFO, f"forwarding to {where}")
        smtp = smtplib.SMTP(local_hostname=session.me, timeout=self.timeout)
        smtp.ehlo_msg = "EHLO"  # smtplib's default is lower case
        try:
            code, greeting = smtp.connect(self.host, self.port)
            if code != 220:
                # a busy or misconfigured next hop, not a verdict on the message
                raise Refused(f"{code} {_text(greeting)}")
            queue_id = self.relay(smtp, session)
        except Refused as exc:
            self.log_error(f"{where} refused: {exc}")
            text = f"Unable to queue message ({exc})"
            if exc.esc:
                text += f" (#{exc.esc})"  # the engine puts it in front of the reply
            return (DENY if exc.permanent else DECLINED), text
        except (OSError, smtplib.SMTPException) as exc:
            reason = _os_reason(exc)
            self.log_error(f"{where}: {reason}")
            return DECLINED, f"Unable to queue message ({reason})"
        finally:
            _close(smtp)
        self.log_pass(f"queued at {where} as {queue_id}")
        return OK, f"queued as {queue_id}"

    def relay(self, smtp, session):
        """Run the transaction; returns the queue id, raises Refused/OSError."""
        transaction = session.transaction
        self.hello(smtp)
        if self.xclient:
            if smtp.has_extn("xclient"):
                self.send_xclient(smtp, session)
                self.hello(smtp)
            else:
                self.log(LOGWARN, "server does not offer XCLIENT, relaying without")
        options = []
        if smtp.has_extn("size"):
            options.append(f"SIZE={transaction.message_size()}")
        body = (getattr(transaction, "mail_params", None) or {}).get("body")
        if body and body.upper() == "8BITMIME" and smtp.has_extn("8bitmime"):
            options.append("BODY=8BITMIME")
        sender = transaction.sender.format() if transaction.sender is not None else "<>"
        _expect(smtp.docmd("MAIL", f"FROM:{sender}" + "".join(" " + o for o in options)),
                (250,))
        refused = []
        for recipient in transaction.recipients:
            code, reply = smtp.docmd("RCPT", f"TO:{recipient.format()}")
            if code not in (250, 251):
                refused.append((recipient, code, reply))
                self.log(LOGINFO, f"recipient refused: {recipient.format()}: "
                                  f"{code} {_text(reply)}")
        if refused:
            recipient, code, reply = refused[0]
            esc, text = _split_esc(reply)
            everyone = len(refused) == len(transaction.recipients)
            permanent = everyone and all(r[1] >= 500 for r in refused)
            raise Refused(f"{recipient.format()}: {code} {text}", permanent, esc)
        _expect(smtp.docmd("DATA"), (354,))
        try:
            for chunk in transaction.data_chunks(b"\r\n"):
                smtp.send(chunk)
        except OSError:
            smtp.close()  # the spool failed mid-DATA: no QUIT, it would be data
            raise
        smtp.sock.settimeout(max(self.timeout, DATA_END_TIMEOUT))
        code, reply = _expect(smtp.getreply(), (250,))
        smtp.sock.settimeout(self.timeout)
        words = _text(reply).split()
        return words[-1] if words else ""

    def hello(self, smtp):
        code, reply = smtp.ehlo()
        if code != 250:
            _expect(smtp.docmd("HELO", smtp.local_hostname), (250,))

    def send_xclient(self, smtp, session):
        connection = session.connection
        offered = {word.upper() for word in smtp.esmtp_features.get("xclient", "").split()}
        host = connection.remote_host
        if not host or host == "Unknown" or host.startswith("["):
            host = "[UNAVAILABLE]"
        address = connection.remote_ip or "[UNAVAILABLE]"
        if ":" in address:
            address = "IPV6:" + address
        values = {
            "NAME": host,
            "ADDR": address,
            "PORT": str(connection.remote_port or "[UNAVAILABLE]"),
            "HELO": connection.hello_host or "[UNAVAILABLE]",
            "PROTO": "ESMTP" if connection.hello == "ehlo" else "SMTP",
        }
        attributes = [f"{name}={_xtext(values[name])}"
                      for name in XCLIENT_ATTRIBUTES if name in offered]
        if not attributes:
            return
        self.log(LOGDEBUG, f"XCLIENT {' '.join(attributes)}")
        code, reply = smtp.docmd("XCLIENT", " ".join(attributes))
        if code not in (220, 250):
            # our set-up's fault, not the message's: keep it at the sender
            raise Refused(f"XCLIENT refused: {code} {_text(reply)}")


def _expect(reply, codes):
    code, text = reply
    if code not in codes:
        esc, text = _split_esc(text)
        raise Refused(f"{code} {text}", 500 <= code < 600, esc)
    return reply


def _split_esc(reply):
    """``b'5.1.1 unknown user'`` -> ``('5.1.1', 'unknown user')``."""
    text = _text(reply)
    match = re.match(r"([245]\.\d{1,3}\.\d{1,3}) (.*)", text)
    return (match.group(1), match.group(2)) if match else (None, text)

def _xtext(value):
    """RFC 3461 xtext, which XCLIENT values use."""
    return "".join(ch if 33 <= ord(ch) <= 126 and ch not in "+=" else
                   "".join(f"+{b:02X}" for b in ch.encode("utf-8", "surrogateescape"))
                   for ch in value)


def _text(reply):
    if isinstance(reply, bytes):
        reply = reply.decode("utf-8", "replace")
    return " ".join(str(reply).split())


def _os_reason(exc):
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return str(exc) or "connection lost"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _close(smtp):
    """QUIT politely if still connected; errors here change nothing."""
    if smtp.sock is None:
        return
    try:
        smtp.sock.settimeout(QUIT_TIMEOUT)
        smtp.docmd("QUIT")
    except (OSError, smtplib.SMTPException):
        pass
    finally:
        smtp.close()
