"""The SMTP conversation: one method per verb, one responder per hook.

``SMTP(app, io, connection).run()`` serves one client from the greeting to
the end of the connection; it never raises for anything the client or a
plugin does. The shape follows RFC 5321 and qpsmtpd's ``Qpsmtpd::SMTP``:

* ``smtp_<verb>`` methods, found by name, check the command's syntax and
  sequence, run the verb's hooks, and hand the result to that hook's
  responder, which maps the hook's code to the reply (§2 of the reference);
* policy lives in plugins: the engine refuses nothing the RFC or the
  configured limits do not require;
* DATA is read line by line up to the end of the header, then in blocks
  (``_receive_body``), dot-unstuffed and written to the spool as it
  arrives; ``databytes`` is enforced while reading, and only
  ``<CR><LF>.<CR><LF>`` ends the message. A bare LF or bare CR in DATA ends
  the session with ``521 5.5.2`` and nothing is queued, so no smuggled
  command can follow;
* ``250`` after DATA is sent only when a queue plugin said ``OK``.

Limits, each read from its config file once per session (0 turns off the
ones marked *):

==========================  ========  ==========================================
file                        default   over it
==========================  ========  ==========================================
max_line_length             4096      ``500 5.5.2 Line too long`` (command lines;
                                      values under 512 count as 512)
max_data_line_length *      0         ``554 5.6.0`` after the final dot, nothing
                                      queued (bytes per message line, CR LF not
                                      counted; RFC 5321 says 998)
max_recipients *            1000      ``452 4.5.3 Too many recipients``
max_transactions *          100       ``421 4.7.0`` at the next MAIL, then close
                                      (MAIL commands answered 250 per session)
max_errors *                20        ``421 4.7.0 Too many errors`` and close
                                      (replies 500-504 and 555 per session)
max_session_time *          3600      ``421 4.4.2`` and close, even mid-DATA
                                      (seconds from the connect)
max_helo_length *           255       ``501 5.5.2`` (HELO/EHLO argument)
max_path_length *           256       ``501 5.1.7``/``5.1.3`` (MAIL/RCPT path
                                      with its angle brackets, RFC 5321
                                      4.5.3.1.3)
hook_timeout *              300       ``451 4.3.0``, then close (seconds per
                                      plugin callback; ``dispatch.HookWatchdog``)
databytes *                 0         ``552 5.3.4`` (at MAIL for ``SIZE=``, after
                                      the final dot otherwise)
timeoutsmtpd, timeout       1200      ``421 4.4.2 Connection Timed Out``
==========================  ========  ==========================================

A spool that cannot be written answers after the final dot: ``452 4.3.1``
when the disk is full (ENOSPC, EDQUOT), ``451 4.3.0`` otherwise; the
partial file is removed either way.

Plugins see this object as ``session``: ``connection``, ``transaction``,
``config(name)``, ``config_list(name)``, ``respond(code, *lines)``,
``reset_transaction()``, ``disconnect()``, ``io`` (the ``LineIO``),
``app``.

Replies carry RFC 3463 enhanced status codes once the client has said EHLO
(the extension is advertised), unless ``config/enhancedstatuscodes`` is 0;
a plugin message ending in ``(#5.7.1)`` gives its own code.
"""

import errno
import os
import re
import socket
import threading
import time

# qpsmtpd.auth and traceback are imported where they are used (AUTH offered,
# a command failing): the per-connection program starts without them.
from . import __version__
from .address import Address
from .command import CommandSyntaxError, parse_path
from .constants import (
    DECLINED, DENY, DENY_DISCONNECT, DENYSOFT, DENYSOFT_DISCONNECT, DONE,
    LOGALERT, LOGCRIT, LOGDEBUG, LOGERROR, LOGINFO, LOGNOTICE, LOGWARN, OK)
from .dispatch import DEFAULT_HOOK_TIMEOUT, INTERNAL_ERROR
from .header import Header
from .transaction import Transaction

KNOWN_VERBS = frozenset(
    ("ehlo", "helo", "rset", "mail", "rcpt", "data", "help", "vrfy", "noop",
     "quit"))
# RFC 5321 commands we know but do not offer: 502, not 500 (4.2.4).
NOT_IMPLEMENTED = frozenset(("expn", "turn", "etrn", "send", "soml", "saml", "bdat"))
_VERB = re.compile(r"\w{1,12}\Z", re.ASCII)
_ESC_PREFIX = re.compile(r"[245]\.\d{1,3}\.\d{1,3} ")
_ESC_IN_TEXT = re.compile(r"\(#[245]\.(\d{1,3}\.\d{1,3})\)")
_ESMTP_WORD = re.compile(r"(?<!\w)ESMTP(?!\w)")
_DKIM_H_TAG = re.compile(r"(?:^|;)\s*h\s*=\s*([^;]*)", re.I)

COMMAND_LINE_LIMIT = 4096   # RFC 5321 4.5.3.1.4 asks for 512; be generous
DATA_PIECE_LIMIT = 65536    # longer DATA lines are streamed in pieces
DEFAULT_MAX_RECIPIENTS = 1000
DEFAULT_MAX_TRANSACTIONS = 100
DEFAULT_MAX_ERRORS = 20          # Postfix's smtpd_hard_error_limit
DEFAULT_MAX_SESSION_TIME = 3600
DEFAULT_MAX_HEADER_SIZE = 102400  # Postfix's header_size_limit; the rest is body
MAX_HELO_LENGTH = 255            # RFC 5321 4.5.3.1.2: a domain
MAX_PATH_LENGTH = 256            # RFC 5321 4.5.3.1.3: a path, <> included
MIN_LINE_LENGTH = 512            # RFC 5321 4.5.3.1.4
# Replies that count as a client error for max_errors: unknown command,
# syntax, sequence, parameter.
ERROR_CODES = frozenset((500, 501, 502, 503, 504, 555))
DISK_FULL = frozenset((errno.ENOSPC, errno.EDQUOT))


class SMTP:
    """One SMTP session on one connection."""

    def __init__(self, app, io, connection):
        self.app = app
        self.io = io
        self.connection = connection
        self.log = app.log
        self.disconnected = False
        self.transaction = self._new_transaction()
        self.mail_parameters = {"size", "body", "auth"}
        self.rcpt_parameters = set()
        self.known_verbs = set(KNOWN_VERBS)
        self._esc_enabled = app.config.get_bool("enhancedstatuscodes", True)
        self.plugin_failed = False
        self.read_limits(app.config)
        self.errors = 0
        self.transactions = 0
        self.session_deadline = (time.monotonic() + self.max_session_time
                                 if self.max_session_time else None)
        # Set by the hook watchdog once a plugin overran hook_timeout.
        self.hook_timed_out = False
        # None: end the process on a hook timeout when the session runs in
        # the process's main thread (forkserver worker, tcpserver); a
        # program serving sessions in its main thread may set False.
        self.exit_on_hook_timeout = None
        self._thread = None

    def read_limits(self, config):
        """The session's limits from their config files (module docstring)."""
        def number(name, default):
            value = config.get_int(name, default)
            if value < 0:
                self.log(LOGWARN, f"config: {name}: ignoring negative value {value}, "
                                  f"using {default}")
                return default
            return value
        line = number("max_line_length", 0)
        self.max_line_length = max(line, MIN_LINE_LENGTH) if line else COMMAND_LINE_LIMIT
        self.max_data_line_length = number("max_data_line_length", 0)
        self.max_transactions = number("max_transactions", DEFAULT_MAX_TRANSACTIONS)
        self.max_errors = number("max_errors", DEFAULT_MAX_ERRORS)
        self.max_session_time = number("max_session_time", DEFAULT_MAX_SESSION_TIME)
        self.max_helo_length = number("max_helo_length", MAX_HELO_LENGTH)
        self.max_path_length = number("max_path_length", MAX_PATH_LENGTH)
        self.hook_timeout = number("hook_timeout", DEFAULT_HOOK_TIMEOUT)
        self.max_header_size = number("max_header_size", DEFAULT_MAX_HEADER_SIZE)
        self.command_timeout = config.command_timeout()

    # -- helpers for plugins --------------------------------------------------

    def config(self, name, default=None):
        return self.app.config.get(name, default)

    def config_list(self, name):
        return self.app.config.get_list(name)

    def config_map(self, name):
        return self.app.config.get_map(name)

    def user_config(self, address, name):
        """Per-recipient configuration: the ``user_config`` hooks' answer
        (a list of lines), else the site-wide ``config_list(name)``."""
        code, values = self.app.dispatcher.run_no_respond(
            self, "user_config", address, name)
        if code == OK:
            if len(values) == 1 and isinstance(values[0], (list, tuple)):
                return list(values[0])
            return list(values)
        return self.app.config.get_list(name)

    @property
    def me(self):
        return self.app.config.me()

    def run_hooks(self, hook, *args):
        return self.app.dispatcher.run_hooks(self, hook, *args)

    # -- the session -----------------------------------------------------------

    def run(self):
        """Serve the client until QUIT, a disconnect verdict, EOF or timeout."""
        connection = self.connection
        self.log.bind_session(self)
        self._thread = threading.current_thread()
        self.log(LOGNOTICE, f"Connection from {connection.remote_info} "
                            f"[{connection.remote_ip}]")
        try:
            if self.start():
                self.command_loop()
        except TimeoutError:
            self.timed_out()
        except ConnectionError:
            self.client_gone()
        finally:
            self.run_hooks("post-connection")
            self.transaction.close()
            self.log.bind_session(None)

    def start(self):
        """Run the connect hooks and greet; False when the client is refused."""
        result = self.run_hooks("connect")
        code, messages = result.code, result.messages
        if code in (DENY, DENY_DISCONNECT):
            self.respond(550, *(messages or ["Connection from you denied, bye bye."]))
            self.disconnect()
            return False
        if code in (DENYSOFT, DENYSOFT_DISCONNECT):
            self.respond(450, *(messages or
                                ["Connection from you temporarily denied, bye bye."]))
            self.disconnect()
            return False
        if code != DONE:
            self.respond(220, self.greeting())
        return not self.disconnected

    def greeting(self):
        configured = self.app.config.smtpgreeting()
        if configured:
            if not _ESMTP_WORD.search(configured):
                configured += " ESMTP"
            return configured
        return (f"{self.me} ESMTP qpsmtpd {__version__} ready; "
                "send us your mail, but not your spam.")

    def command_loop(self):
        io = self.io
        limit = self.max_line_length
        while not self.disconnected:
            if self.max_errors and self.errors >= self.max_errors:
                return self.too_many_errors()
            timeout = self.command_timeout
            if self.session_deadline is not None:
                remaining = self.session_deadline - time.monotonic()
                if remaining <= 0:
                    return self.session_expired()
                timeout = min(timeout, remaining)
            io.set_timeout(timeout)
            raw = io.read_line(limit)
            if not raw.endswith(b"\n"):
                if len(raw) < limit:
                    self.client_eof()
                    return
                self._skip_rest_of_line()
                self.respond(500, "Line too long", esc="5.5.2")
                continue
            line = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
            if b"\0" in line:
                self.respond(500, "Syntax error: NUL character in command", esc="5.5.2")
                continue
            if b"\r" in line:
                # RFC 5321 2.3.8: CR only before LF; a bare CR could split
                # one command into two in some other MTA's eyes.
                self.respond(500, "Syntax error: bare <CR> in command", esc="5.5.2")
                continue
            self.dispatch(line.decode("utf-8", "surrogateescape"))

    def too_many_errors(self):
        """``max_errors`` replies 500-504/555 in this session: 421 and close."""
        self.log(LOGINFO, f"too many errors ({self.errors}, max_errors "
                          f"{self.max_errors}): closing the connection")
        self.respond(421, "Too many errors, closing connection", esc="4.7.0")
        self.disconnect()

    def session_expired(self):
        """``max_session_time`` is over: 421 and close (nothing queued when
        it happens during DATA)."""
        self.log(LOGINFO, f"session time limit of {self.max_session_time} s "
                          "reached: closing the connection")
        self.respond(421, "Session time limit exceeded, closing connection",
                     esc="4.4.2")
        self.disconnect()

    def _skip_rest_of_line(self):
        while True:
            piece = self.io.read_line(self.max_line_length)
            if not piece or piece.endswith(b"\n"):
                return

    def dispatch(self, line):
        """Run one command line."""
        if self.log.enabled(LOGINFO):
            shown = line
            if line[:11].upper() == "AUTH PLAIN " and self.app.config.loglevel() < 7:
                shown = line[:11] + "<hidden credentials>"
            self.log(LOGINFO, f"dispatching {shown}")
        self.connection.notes["original_string"] = line
        verb, _, rest = line.partition(" ")
        rest = rest.lstrip(" ")
        verb = verb.lower()
        if not _VERB.match(verb) or verb not in self.known_verbs:
            return self.unrecognized_command(verb, rest)
        handler = getattr(self, "smtp_" + verb)
        try:
            handler(rest)
        except (ConnectionError, TimeoutError):
            raise
        except Exception as exc:
            self.log(LOGERROR, f"XX: {exc!r}")
            import traceback
            for text in traceback.format_exc().rstrip().splitlines():
                self.log(LOGERROR, text)
            self.respond(451, "Internal error - try again later - command "
                         f"'{verb}' failed unexpectedly", esc="4.3.0")

    # -- replies ---------------------------------------------------------------

    def respond(self, code, *lines, esc=None):
        """Send a (multi-line) reply; returns False when the client is gone.

        ``esc`` is the enhanced status code used when the extension is on
        (``""``: none, as for EHLO replies); a line that already starts with
        one, or ends in ``(#x.y.z)``, keeps its own.
        """
        texts = []
        for line in lines:
            if line is None or line == "":
                break
            texts.extend(str(line).replace("\r", "").split("\n"))
        if not texts or self.hook_timed_out:
            return not self.hook_timed_out
        if code in ERROR_CODES:
            self.errors += 1
        if self._esc_enabled and esc != "" and self.connection.hello == "ehlo" \
                and code >= 200 and not 300 <= code < 400:
            texts = [_with_esc(code, text, esc) for text in texts]
        out = []
        last = len(texts) - 1
        for index, text in enumerate(texts):
            reply = f"{code}{'-' if index < last else ' '}{text}"
            self.log(LOGINFO, reply)
            out.append(reply + "\r\n")
        try:
            self.io.write("".join(out).encode("utf-8", "surrogateescape"))
        except OSError:
            self.log(LOGERROR, "Lost connection to client, cannot send response.")
            self.disconnected = True
            return False
        return True

    # -- transaction and disconnect --------------------------------------------

    def _new_transaction(self):
        app = self.app
        try:
            spool_dir = app.spool_dir()
        except OSError as exc:
            # Reported again at DATA, where it becomes a 451.
            self.log(LOGERROR, f"spool_dir unusable: {exc}")
            spool_dir = None
        return Transaction(spool_dir, app.config.size_threshold(),
                           on_spool=lambda: self.log(LOGINFO, "spooling message to disk"))

    def reset_transaction(self):
        """End the current transaction (firing ``reset_transaction``)."""
        self.run_hooks("reset_transaction")
        self.transaction.close()
        self.transaction = self._new_transaction()
        return self.transaction

    def disconnect(self):
        """Run the disconnect hooks and end the session."""
        if self.disconnected and self.connection.notes.get("disconnected"):
            return
        self.run_hooks("disconnect")
        self.log(LOGINFO, "click, disconnecting")
        self.connection.notes["disconnected"] = 1
        self.reset_transaction()
        self.disconnected = True

    def client_eof(self):
        """The client closed the connection."""
        self.reset_transaction()
        self.run_hooks("disconnect")
        self.connection.notes["disconnected"] = 1
        self.disconnected = True

    def client_gone(self):
        """The connection broke (reset by peer)."""
        self.log(LOGINFO, "client connection lost")
        self.client_eof()

    def timed_out(self):
        """Idle or DATA timeout: 421, then the usual end-of-session hooks.

        The original ran no hooks here; we run ``disconnect`` (and the caller
        ``post-connection``) so plugins that record the session see it end.
        """
        if self.session_deadline is not None and time.monotonic() >= self.session_deadline:
            self.log(LOGINFO, f"session time limit of {self.max_session_time} s reached")
            self.respond(421, "Session time limit exceeded, closing connection",
                         esc="4.4.2")
        else:
            self.respond(421, "Connection Timed Out", esc="4.4.2")
        self.log(LOGINFO, "Connection Timed Out")
        self.reset_transaction()
        self.run_hooks("disconnect")
        self.connection.notes["disconnected"] = 1
        self.disconnected = True

    def hook_deadline_passed(self, plugin_name, hook, timeout):
        """A plugin callback overran ``hook_timeout`` (called from the
        watchdog thread while the session's thread is still inside it).

        The client gets ``451 4.3.0`` (unless the session already ended),
        the spooled message is removed, the socket is shut down, and nothing
        more is sent. A session that owns its process (see
        ``exit_on_hook_timeout``) ends the process with status 1; otherwise
        its thread returns once the plugin does.
        """
        self.log(LOGCRIT, f"hook_timeout: plugin {plugin_name} did not return from "
                          f"hook {hook} within {timeout} s; ending the session",
                 hook=hook)
        if not self.disconnected:
            self.respond(451, INTERNAL_ERROR, esc="4.3.0")
        self.hook_timed_out = True
        self.disconnected = True
        if self.transaction.spool is not None:
            self.transaction.spool.discard()
        try:
            self.io.sock.shutdown(socket.SHUT_RDWR)
        except (OSError, AttributeError):
            pass
        exits = self.exit_on_hook_timeout
        if exits is None:
            exits = self._thread is threading.main_thread()
        if exits:
            os._exit(1)

    # -- HELO / EHLO -------------------------------------------------------------

    def smtp_helo(self, rest):
        self._hello("helo", rest)

    def smtp_ehlo(self, rest):
        self._hello("ehlo", rest)

    def _hello(self, verb, rest):
        words = rest.split()
        parsed = self.run_hooks(verb + "_parse")
        if parsed.values and callable(parsed.values[0]):
            try:
                _, *words = parsed.values[0](self, verb, rest)
            except Exception as exc:
                self.log(LOGERROR, f"{verb}_parse failed: {exc!r}")
                words = []
            words = [w for w in words if w]
        if not words:
            return self.respond(501, f"{verb} requires domain/address - see "
                                     "RFC-2821 4.1.1.1", esc="5.5.4")
        if self.max_helo_length and len(words[0]) > self.max_helo_length:
            return self.respond(501, f"{verb} argument too long (at most "
                                     f"{self.max_helo_length} characters)", esc="5.5.2")
        if self.connection.hello:
            # RFC 5321 4.1.4: a later EHLO/HELO resets the session as RSET
            # would (the original refused it with 503).
            self.reset_transaction()
            self.connection.hello = self.connection.hello_host = None
        host, extra = words[0], words[1:]
        result = self.run_hooks(verb, host, *extra)
        code, messages = result.code, result.messages
        if code == DONE:
            return
        if code in (DENY, DENY_DISCONNECT):
            self.respond(550, *(messages or ["Denied"]), esc="5.7.1")
        elif code in (DENYSOFT, DENYSOFT_DISCONNECT):
            self.respond(450, *(messages or ["Temporarily denied"]), esc="4.7.1")
        else:
            self.connection.hello = verb
            self.connection.hello_host = host
            conn = self.connection
            greeting = f"{self.me} Hi {conn.remote_info} [{conn.remote_ip}]"
            if verb == "helo":
                self.respond(250, greeting + "; I am so happy to meet you.", esc="")
            else:
                self.respond(250, greeting, *self.ehlo_capabilities(), esc="")
            return
        if code.disconnects:
            self.disconnect()

    def ehlo_capabilities(self):
        """The EHLO keywords after the greeting line (§3.4)."""
        capabilities = ["PIPELINING", "8BITMIME"]
        databytes = self.app.config.databytes()
        if databytes:
            capabilities.append(f"SIZE {databytes}")
        if self._esc_enabled:
            capabilities.append("ENHANCEDSTATUSCODES")
        capabilities.extend(self.transaction.notes.get("capabilities") or ())
        mechanisms = ()
        if self.app.dispatcher.offers_auth():
            from . import auth
            mechanisms = auth.mechanisms(self.app.dispatcher)
        if mechanisms:
            # AUTH is a command from here on; while STARTTLS must come first
            # it is withheld from the list and answered 503.
            self.known_verbs.add("auth")
            if not auth.tls_required(self):
                capabilities.append("AUTH " + " ".join(mechanisms))
        return capabilities

    # -- MAIL --------------------------------------------------------------------

    def smtp_mail(self, rest):
        if not self.connection.hello:
            return self.respond(503, "please say hello first ...", esc="5.5.1")
        if self.transaction.sender is not None:
            # RFC 5321 3.3: MAIL inside a transaction is a sequence error.
            return self.respond(503, "Error: nested MAIL command", esc="5.5.1")
        if self.max_transactions and self.transactions >= self.max_transactions:
            self.log(LOGINFO, f"max_transactions {self.max_transactions} reached: "
                              "closing the connection")
            self.respond(421, "Too many messages in this connection, please "
                              "reconnect", esc="4.7.0")
            return self.disconnect()
        self.reset_transaction().started_mail = True
        self.connection.notes["envelope_from"] = rest
        parsed = self._parse_path("mail_parse", "mail", "from", rest)
        if parsed is None:
            return
        path, params = parsed
        if self._path_too_long(path, "5.1.7"):
            return
        pre = self.run_hooks("mail_pre", path, params)
        if pre.code == OK and pre.values and pre.values[0] is not None:
            path = str(pre.values[0])
        sender = _sender_address(path)
        if sender is None:
            return self.respond(501, "could not parse your mail from command",
                                esc="5.1.7")
        if not self._check_mail_parameters(params):
            return
        self.log(LOGDEBUG, f"getting mail from {sender.format()}")
        result = self.run_hooks("mail", sender, params)
        code, messages = result.code, result.messages
        shown = sender.format()
        if code == DONE:
            return
        if code in (DENY, DENY_DISCONNECT):
            text = messages[0] if messages else ""
            self.log(LOGINFO, f"deny mail from {shown} ({text})")
            self.respond(550, *(messages or [f"{shown}, denied"]), esc="5.7.1")
        elif code == DENYSOFT:
            text = messages[0] if messages else ""
            self.log(LOGINFO, f"denysoft mail from {shown} ({text})")
            self.respond(450, *(messages or [f"{shown}, temporarily denied"]), esc="4.7.1")
        elif code == DENYSOFT_DISCONNECT:
            self.respond(421, *(messages or [f"{shown}, temporarily denied"]), esc="4.7.1")
        else:
            self.transaction.sender = sender
            self.transaction.mail_params = params
            self.transactions += 1
            self.respond(250, f"{shown}, sender OK - how exciting to get mail "
                              "from you!", esc="2.1.0")
            return
        if code.disconnects:
            self.disconnect()

    def _path_too_long(self, path, esc):
        """RFC 5321 4.5.3.1.3; answers 501 when ``path`` is over the limit."""
        if self.max_path_length and len(path) > self.max_path_length:
            self.respond(501, f"Path too long (at most {self.max_path_length} "
                              "characters)", esc=esc)
            return True
        return False

    def _parse_path(self, hook, verb, keyword, rest):
        """Run the ``*_parse`` hook or the built-in parser; 501 on failure.

        A parser a plugin returns is called as ``parser(session, verb, rest)``
        and returns ``(OK, path, params)`` (params a dict, or key, value, ...
        pairs) or ``(DENY, message)``.
        """
        parsed = self.run_hooks(hook, rest)
        if parsed.values and callable(parsed.values[0]):
            try:
                code, *values = parsed.values[0](self, verb, rest)
            except Exception as exc:
                self.log(LOGERROR, f"{hook} failed: {exc!r}")
                code, values = DENY, ["Failed to parse line"]
            if code != OK:
                self.respond(501, (values[0] if values else "") or
                             "Syntax error in command", esc="5.5.2")
                return None
            path = values[0] if values else ""
            if len(values) == 2 and isinstance(values[1], dict):
                params = values[1]
            else:
                pairs = values[1:]
                params = {str(k).lower(): v for k, v in zip(pairs[0::2], pairs[1::2])}
            return (path or ("<>" if keyword == "from" else "")), params
        try:
            return parse_path(keyword, rest)
        except CommandSyntaxError as exc:
            self.respond(501, str(exc), esc="5.5.2")
            return None

    def _check_mail_parameters(self, params):
        """RFC 1869/1870/6152 checks of MAIL parameters; replies on failure."""
        unknown = [k for k in params if k not in self.mail_parameters]
        if unknown:
            self.respond(555, f"Unsupported parameter: {unknown[0].upper()}",
                         esc="5.5.4")
            return False
        body = params.get("body")
        if "body" in params and (body or "").upper() not in ("7BIT", "8BITMIME"):
            self.respond(501, "Syntax error in BODY parameter", esc="5.5.4")
            return False
        if "size" in params:
            size = params["size"] or ""
            if not size.isdigit():
                self.respond(501, "Syntax error in SIZE parameter", esc="5.5.4")
                return False
            databytes = self.app.config.databytes()
            if databytes and int(size) > databytes:
                self.respond(552, "Message size exceeds fixed maximum message size",
                             esc="5.3.4")
                return False
        return True

    # -- RCPT --------------------------------------------------------------------

    def smtp_rcpt(self, rest):
        self.connection.notes["envelope_rcpt"] = rest
        parsed = self._parse_path("rcpt_parse", "rcpt", "to", rest)
        if parsed is None:
            return
        transaction = self.transaction
        if transaction.sender is None:
            return self.respond(503, "Use MAIL before RCPT", esc="5.5.1")
        path, params = parsed
        if self._path_too_long(path, "5.1.3"):
            return
        pre = self.run_hooks("rcpt_pre", path, params)
        if pre.code == OK and pre.values and pre.values[0] is not None:
            path = str(pre.values[0])
        recipient = None
        if path.startswith("<") and path.endswith(">") and path != "<>":
            recipient = Address.parse(path)
        if recipient is None or recipient.is_null():
            return self.respond(501, "could not parse recipient", esc="5.1.3")
        unknown = [k for k in params if k not in self.rcpt_parameters]
        if unknown:
            return self.respond(555, f"Unsupported parameter: {unknown[0].upper()}",
                                esc="5.5.4")
        limit = self.app.config.get_int("max_recipients", DEFAULT_MAX_RECIPIENTS)
        if limit and len(transaction.recipients) >= limit:
            return self.respond(452, "Too many recipients", esc="4.5.3")
        result = self.run_hooks("rcpt", recipient, params)
        code, messages = result.code, result.messages
        shown = recipient.format()
        if code == DONE:
            return
        if code == DENY:
            self.respond(550, *(messages or ["relaying denied"]), esc="5.7.1")
        elif code == DENYSOFT:
            self.respond(450, *(messages or ["relaying denied"]), esc="4.7.1")
        elif code == DENY_DISCONNECT:
            self.respond(550, *(messages or ["delivery denied"]), esc="5.7.1")
        elif code == DENYSOFT_DISCONNECT:
            self.respond(421, *(messages or ["relaying denied"]), esc="4.7.1")
        elif code == OK:
            transaction.add_recipient(recipient)
            self.respond(250, f"{shown}, recipient ok", esc="2.1.5")
            return
        else:
            self.respond(450, "No plugin decided if relaying is allowed", esc="4.7.1")
            return
        if code.disconnects:
            self.disconnect()

    # -- DATA ----------------------------------------------------------------------

    def smtp_data(self, rest):
        result = self.run_hooks("data")
        code, messages = result.code, result.messages
        if code == DONE:
            return
        if code in (DENY, DENY_DISCONNECT):
            self.respond(554, *(messages or ["Message denied"]), esc="5.7.1")
        elif code in (DENYSOFT, DENYSOFT_DISCONNECT):
            self.respond(451, *(messages or ["Message denied temporarily"]), esc="4.7.1")
        elif self.transaction.sender is None:
            return self.respond(503, "MAIL first", esc="5.5.1")
        elif not self.transaction.recipients:
            return self.respond(503, "RCPT first", esc="5.5.1")
        else:
            self.respond(354, "go ahead")
            return self.receive_message()
        if code.disconnects:
            self.disconnect()
        else:
            self.reset_transaction()

    def receive_message(self):
        """Read the message after 354 up to ``<CR><LF>.<CR><LF>`` (§3.6)."""
        transaction = self.transaction
        transaction.started_data = True
        config = self.app.config
        max_size = config.databytes()
        self.io.set_timeout(config.data_timeout())
        read_line = self.io.read_line
        write = transaction.body_write
        header = Header()
        in_header = True
        size = 0
        too_big = False
        at_line_start = True
        pending_cr = False
        spool_error = None
        max_line = self.max_data_line_length
        line_length = 0
        line_too_long = False
        deadline = self.session_deadline
        monotonic = time.monotonic
        self.plugin_failed = False
        while True:
            if at_line_start and not pending_cr and (
                    not in_header or too_big or spool_error or line_too_long):
                # The header is done (or nothing more will be stored): the
                # rest goes in blocks, the same rules applied to many lines
                # at once.
                outcome = self._receive_body(size, max_size, too_big, spool_error,
                                             line_too_long)
                if outcome is None:
                    return
                size, too_big, spool_error, line_too_long = outcome
                break
            piece = read_line(DATA_PIECE_LIMIT)
            if deadline is not None and monotonic() > deadline:
                return self.session_expired()
            if not piece:
                self.log(LOGINFO, "client closed the connection during DATA")
                self.respond(451, "Incomplete DATA", esc="4.3.0")
                self.client_eof()
                return
            if pending_cr:
                pending_cr = False
                if piece == b"\n":
                    at_line_start = True
                    continue
                return self._bare_newline()
            if piece[-1:] == b"\n":
                if piece[-2:-1] != b"\r":
                    return self._bare_newline()
                content = piece[:-2]
                complete = True
            else:
                content = piece
                complete = False
                if content[-1:] == b"\r":
                    content = content[:-1]
                    pending_cr = True
            if b"\r" in content:
                return self._bare_newline()
            if at_line_start:
                if complete and content == b".":
                    break
                if content[:1] == b".":
                    content = content[1:]
            at_line_start = complete or pending_cr
            if pending_cr:
                # the CR LF pair was split across two pieces: this is a
                # complete line once the LF arrives
                complete = True
            data = content + b"\n" if complete else content
            size += len(data)
            if max_line:
                line_length += len(content)
                if line_length > max_line and not line_too_long:
                    line_too_long = True
                    if transaction.spool is not None:
                        transaction.spool.discard()
                if complete:
                    line_length = 0
            if too_big or spool_error or line_too_long:
                continue
            if max_size and size > max_size:
                too_big = True
                if transaction.spool is not None:
                    transaction.spool.discard()
                continue
            if in_header:
                text = content.decode("utf-8", "surrogateescape")
                if not (complete and text and size <= self.max_header_size
                        and header.feed(text)):
                    in_header = False
                    self._headers_end(header, size - len(data))
                    if self.disconnected:
                        return
            try:
                write(data)
            except OSError as exc:
                # Keep reading to the final dot so no message line is ever
                # taken for a command; answer 451 then.
                spool_error = exc
                self.log(LOGERROR, f"cannot write the message to the spool: {exc}")
                if transaction.spool is not None:
                    transaction.spool.discard()
        transaction.data_size = size
        if not (spool_error or too_big or line_too_long) and transaction.spool is not None:
            try:
                transaction.spool.flush()
            except OSError as exc:
                spool_error = exc
                self.log(LOGERROR, f"cannot write the message to the spool: {exc}")
                transaction.spool.discard()
        if spool_error:
            if spool_error.errno in DISK_FULL:
                self.respond(452, "Insufficient system storage, try again later",
                             esc="4.3.1")
            else:
                self.respond(451, "Error writing message to the spool, try again later",
                             esc="4.3.0")
            self.reset_transaction()
            return
        if line_too_long:
            self.log(LOGINFO, f"message refused: a line longer than {max_line} "
                              "characters (max_data_line_length)")
            self.respond(554, f"Message has a line longer than {max_line} "
                              "characters", esc="5.6.0")
            self.reset_transaction()
            return
        if too_big:
            self.log(LOGALERT, f"Message too big: size: {size} (max size: {max_size})")
            self.respond(552, "Message too big!", esc="5.3.4")
            self.reset_transaction()
            return
        if in_header:
            self._headers_end(header, size)
            if self.disconnected:
                return
        self.log(LOGDEBUG, f"max_size: {max_size} / size: {size}")
        self.after_data()

    def _receive_body(self, size, max_size, too_big, spool_error, line_too_long):
        """The rest of DATA from the start of a line, read in blocks: the
        line-by-line rules of ``receive_message`` applied with bytes
        operations, so the same bytes reach the spool and the same reply
        follows. Returns ``(size, too_big, spool_error, line_too_long)``
        after the final dot, whatever follows it put back for the command
        loop; None when the session ended (EOF, bare CR or LF, session
        time)."""
        io = self.io
        read_block = io.read_block
        transaction = self.transaction
        write = transaction.body_write
        max_line = self.max_data_line_length
        deadline = self.session_deadline
        monotonic = time.monotonic
        held = []              # the start of a line whose LF has not arrived
        held_size = 0
        at_line_start = True   # held (else the next block) starts a line
        line_length = 0        # bytes of the open line already passed on
        while True:
            block = read_block(DATA_PIECE_LIMIT)
            if deadline is not None and monotonic() > deadline:
                self.session_expired()
                return None
            if not block:
                # As line by line: a CR in the unfinished last line is bare
                # unless it is the last byte (its LF may have been coming).
                if b"\r" in b"".join(held)[:-1]:
                    self._bare_newline()
                    return None
                self.log(LOGINFO, "client closed the connection during DATA")
                self.respond(451, "Incomplete DATA", esc="4.3.0")
                self.client_eof()
                return None
            last = block.rfind(b"\n")
            if last < 0 and held_size + len(block) <= DATA_PIECE_LIMIT:
                held.append(block)
                held_size += len(block)
                continue
            if held:
                held.append(block)
                data = b"".join(held)
                if last >= 0:
                    last += held_size
            else:
                data = block
            start = 1 if at_line_start and data[:1] == b"." else 0
            finished = False
            if last < 0:
                # A line longer than a block: pass its start on, all but a
                # CR at the end, which may be the first half of its CR LF.
                stop = len(data) - 1 if data[-1:] == b"\r" else len(data)
                body = data[start:stop]
                held = [data[stop:]] if stop < len(data) else []
                held_size = len(data) - stop
                if b"\r" in body:
                    self._bare_newline()
                    return None
                at_line_start = False
                if max_line and not line_too_long:
                    line_length += len(body)
                    line_too_long = line_length > max_line
            else:
                # Most blocks have no line that starts with a dot: one search
                # rules out both the final dot and stuffed dots.
                dot = data.find(b"\r\n.")
                if start and data.startswith(b".\r\n"):
                    stop = 0
                elif dot >= 0:
                    stop = data.find(b"\r\n.\r\n", dot)
                    if stop >= 0:
                        stop += 2
                else:
                    stop = -1
                if stop >= 0:
                    # the final dot: what follows it is the client's next
                    # commands
                    finished = True
                    io.unread(data[stop + 3:])
                    held = []
                else:
                    stop = last + 1
                    held = [data[stop:]] if stop < len(data) else []
                lines = data[start:stop] if start or stop < len(data) else data
                held_size = len(data) - stop if held else 0
                body = lines.replace(b"\r\n", b"\n")
                # each CR LF became one byte shorter: every LF had its CR
                # when there are as many LFs as bytes saved, and every CR
                # its LF when no CR is left
                if body.count(b"\n") != len(lines) - len(body) or b"\r" in body:
                    self._bare_newline()
                    return None
                if dot >= 0:
                    body = body.replace(b"\n.", b"\n")
                if max_line and not line_too_long:
                    line_too_long = _has_long_line(body, max_line, line_length)
                at_line_start = True
                line_length = 0
            size += len(body)
            if too_big or spool_error or line_too_long:
                if transaction.spool is not None:
                    transaction.spool.discard()
            elif max_size and size > max_size:
                too_big = True
                if transaction.spool is not None:
                    transaction.spool.discard()
            elif body:
                try:
                    write(body)
                except OSError as exc:
                    # Read on to the final dot as line by line: 451 then.
                    spool_error = exc
                    self.log(LOGERROR, f"cannot write the message to the spool: {exc}")
                    if transaction.spool is not None:
                        transaction.spool.discard()
            if finished:
                return size, too_big, spool_error, line_too_long

    def _headers_end(self, header, header_size):
        transaction = self.transaction
        transaction.header = header
        transaction.header_size = header_size
        transaction.body_start = header_size
        transaction.data_size = header_size  # so far; final after the dot
        result = self.run_hooks("data_headers_end")
        if result.crashed:
            self.plugin_failed = True
        if result.code == DENY_DISCONNECT:
            self.respond(554, *(result.messages or ["Message denied"]), esc="5.7.1")
            self.disconnect()
        elif result.code == DENYSOFT_DISCONNECT:
            self.respond(421, *(result.messages or ["Message denied temporarily"]),
                         esc="4.7.1")
            self.disconnect()

    def _bare_newline(self):
        """A DATA line ended in a bare LF or held a bare CR (RFC 5321 2.3.8).

        Nothing is queued and the connection is closed: reading on would
        risk treating ``<LF>.<CR><LF>`` as the end of data (SMTP smuggling).
        """
        self.log(LOGINFO, "bare LF or CR in DATA, message refused")
        self.respond(521, "Error: bare <LF> or <CR> received; lines must end "
                          "with <CR><LF> (RFC 5321 2.3.8)", esc="5.5.2")
        self.disconnect()

    def after_data(self):
        """The post-DATA pipeline (§3.7): headers, data_post, queue."""
        transaction = self.transaction
        if self.run_hooks("data_post_headers").crashed:
            self.plugin_failed = True
        header = transaction.header
        server_id = self.app.config.get("me-auth-results") or self.me
        if server_id != "none":
            self._clean_authentication_results(header)
        header.add("Received", self.received_value(), 0)
        if server_id != "none":
            header.add("Authentication-Results", self.authentication_results(server_id), 0)
        if self.plugin_failed:
            self.respond(451, INTERNAL_ERROR, esc="4.3.0")
            return self.reset_transaction()
        result = self.run_hooks("data_post")
        code, messages = result.code, result.messages
        if code == DONE:
            return
        if code in (DENY, DENY_DISCONNECT):
            self.respond(552, *(messages or ["Message denied"]), esc="5.7.1")
        elif code in (DENYSOFT, DENYSOFT_DISCONNECT):
            self.respond(452, *(messages or ["Message denied temporarily"]), esc="4.7.1")
        else:
            return self.queue()
        if code.disconnects:
            self.disconnect()
        else:
            self.reset_transaction()

    def queue(self):
        pre = self.run_hooks("queue_pre")
        if pre.code == DONE:
            return
        if pre.code not in (OK, DECLINED):
            self.log(LOGERROR, "pre plugin returned illegal value")
            self.respond(451, *(pre.messages or [INTERNAL_ERROR]), esc="4.3.0")
            return self.reset_transaction()
        result = self.run_hooks("queue")
        code, messages = result.code, result.messages
        self.reset_transaction()
        if code == DONE:
            return
        if code == OK:
            self.respond(250, *(messages or ["Queued"]), esc="2.0.0")
        elif code == DENY:
            self.respond(552, *(messages or ["Message denied"]), esc="5.7.1")
        elif code == DENYSOFT:
            self.respond(452, *(messages or ["Message denied temporarily"]), esc="4.3.0")
        else:
            self.respond(451, *(messages or ["Queuing declined or disabled; try "
                                             "again later"]), esc="4.3.0")
        post = self.run_hooks("queue_post")
        if post.code not in (OK, DECLINED) and post.messages:
            self.log(LOGERROR, " ".join(post.messages))

    def received_value(self):
        """The value of the Received header (§3.8), or a plugin's."""
        conn = self.connection
        proto = "SMTP"
        if conn.hello == "ehlo":
            proto = "ESMTP" + ("S" if conn.tls else "") + ("A" if conn.auth_user else "")
        tls = f"({conn.tls.get('cipher')} encrypted)" if conn.tls else ""
        auth = (f"(smtp-auth username {conn.auth_user}, mechanism "
                f"{conn.auth_mechanism})\n" if conn.auth_user else "")
        result = self.run_hooks("received_line", proto, auth, tls)
        if result.code == OK and result.values:
            return "\n".join(str(v) for v in result.values)
        date = time.strftime("%a, %d %b %Y %H:%M:%S %z", time.localtime())
        with_part = f"{proto} {tls}" if tls else proto
        return (f"from {conn.remote_info} (HELO {conn.hello_host}) ({conn.remote_ip})\n"
                f" by {self.me} (qpsmtpd/{__version__}) with {with_part}; {date}")

    def authentication_results(self, server_id):
        conn = self.connection
        parts = [server_id]
        if conn.auth_user:
            parts.append(f"auth=pass ({conn.auth_mechanism.lower()}) "
                         f"smtp.auth={conn.auth_user}")
        elif conn.notes.get("auth_failed"):
            parts.append("auth=fail")
        else:
            parts.append("auth=none")
        parts.extend(conn.auth_results)
        parts.extend(self.transaction.auth_results)
        return "; ".join(parts)

    def _clean_authentication_results(self, header):
        """Rename incoming Authentication-Results so nobody trusts a forgery,
        unless a DKIM signature covers them."""
        if not header.count("Authentication-Results"):
            return
        for signature in header.get_all("DKIM-Signature"):
            match = _DKIM_H_TAG.search(signature.replace("\n", ""))
            if match and "authentication-results" in [
                    h.strip().lower() for h in match.group(1).split(":")]:
                return
        values = [raw for name, raw in header.fields
                  if name.lower() == "authentication-results"]
        header.delete("Authentication-Results")
        for raw in values:
            header.fields.append(["Original-Authentication-Results", raw])
        self.log(LOGDEBUG, "Authentication-Results moved to "
                           "Original-Authentication-Results")

    # -- AUTH ------------------------------------------------------------------------

    def smtp_auth(self, rest):
        """RFC 4954 AUTH; see ``qpsmtpd.auth``."""
        from . import auth
        auth.smtp_auth(self, rest)

    # -- the small verbs -------------------------------------------------------------

    def smtp_rset(self, rest):
        self.reset_transaction()
        self.respond(250, "OK", esc="2.0.0")

    def smtp_noop(self, rest):
        result = self.run_hooks("noop")
        if result.crashed:
            return self.respond(451, INTERNAL_ERROR, esc="4.3.0")
        if result.code == DONE:
            return
        if result.code in (DENY, DENY_DISCONNECT):
            self.respond(500, *(result.messages or ["Stop wasting my time."]), esc="5.5.1")
            if result.code == DENY_DISCONNECT:
                self.disconnect()
            return
        self.respond(250, "OK", esc="2.0.0")

    def smtp_vrfy(self, rest):
        result = self.run_hooks("vrfy")
        if result.crashed:
            return self.respond(451, INTERNAL_ERROR, esc="4.3.0")
        if result.code == DONE:
            return
        if result.code == DENY:
            self.respond(554, *(result.messages or ["Access Denied"]), esc="5.7.1")
            self.reset_transaction()
        elif result.code == OK:
            self.respond(250, *(result.messages or ["User OK"]), esc="2.1.5")
        else:
            self.respond(252, "Just try sending a mail and we'll see how it turns "
                              "out ...", esc="2.5.2")

    def smtp_help(self, rest):
        result = self.run_hooks("help", rest)
        if result.crashed:
            return self.respond(451, INTERNAL_ERROR, esc="4.3.0")
        if result.code == DONE:
            return
        if result.code == DENY:
            return self.respond(500, *(result.messages or
                                       ["Syntax error, command not recognized"]),
                                esc="5.5.1")
        if result.messages:
            return self.respond(214, *result.messages, esc="2.0.0")
        version = "" if self.app.config.smtpgreeting() else __version__
        self.respond(214, f"This is qpsmtpd {version}",
                     "See http://smtpd.develooper.com/",
                     "To report bugs or send comments, mail to <ask@develooper.com>.",
                     esc="2.0.0")

    def smtp_quit(self, rest):
        result = self.run_hooks("quit")
        if result.code != DONE:
            self.respond(221, *((not result.crashed and result.messages) or
                                [f"{self.me} closing connection. Have a wonderful day."]),
                         esc="2.0.0")
        self.disconnect()

    def unrecognized_command(self, verb, rest):
        result = self.run_hooks("unrecognized_command", verb, rest)
        if result.crashed:
            return self.respond(451, INTERNAL_ERROR, esc="4.3.0")
        if result.code == DENY_DISCONNECT:
            self.respond(521, *(result.messages or ["Closing connection"]), esc="5.5.1")
            self.disconnect()
        elif result.code == DENY:
            self.respond(500, *(result.messages or ["Unrecognized command"]), esc="5.5.1")
        elif result.code != DONE:
            if verb in NOT_IMPLEMENTED:
                self.respond(502, "Command not implemented", esc="5.5.1")
            else:
                self.respond(500, "Unrecognized command", esc="5.5.1")


def _has_long_line(body, limit, open_length=0):
    """True when a line of ``body`` (lines ending in LF; the first one
    continues a line ``open_length`` bytes long) has more than ``limit``
    bytes before its LF. Looks at one window of ``limit`` + 1 bytes per step
    instead of at every line."""
    pos = 0
    size = len(body)
    if open_length:
        first = body.find(b"\n")
        if first < 0:
            first = size
        if open_length + first > limit:
            return True
        pos = first + 1
    while size - pos > limit:
        newline = body.rfind(b"\n", pos, pos + limit + 1)
        if newline < 0:
            return True
        pos = newline + 1
    return False


def _sender_address(path):
    """The Address for a MAIL path, or None when it cannot be parsed."""
    if not (path.startswith("<") and path.endswith(">")):
        return None
    if path in ("<>", "<#@[]>") or "[undefined]" in path:
        return Address()
    return Address.parse(path)


def _with_esc(code, text, esc):
    if _ESC_PREFIX.match(text):
        return text
    klass = str(code)[0]
    match = _ESC_IN_TEXT.search(text)
    if match:
        return f"{klass}.{match.group(1)} {text}"
    if esc is None:
        esc = f"{klass}.0.0"
    elif esc[0] != klass:
        esc = klass + esc[1:]
    return f"{esc} {text}"
