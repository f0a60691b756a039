"""SMTP AUTH (RFC 4954): the AUTH verb, the SASL mechanisms PLAIN, LOGIN and
CRAM-MD5, and the password checks auth plugins share.

The engine calls:

* ``mechanisms(dispatcher)`` — the mechanisms to advertise, upper case, in
  the fixed order ``PLAIN LOGIN CRAM-MD5``: every mechanism when a plugin
  hooks the generic ``auth`` hook, else those with an ``auth-<mech>`` hook
  (the original's order was Perl hash order, different per process);
* ``tls_required(session)`` — True while STARTTLS is offered on this
  connection but not yet used and ``config/tls_before_auth`` is on (the
  default here; qpsmtpd's default was off). The offer is recorded on the
  connection (note ``tls_offered``, set by the ``tls`` plugin at EHLO), so
  ``EHLO``, ``RSET``, ``AUTH`` cannot slip past it as it could in the
  original, where the flag was a transaction note;
* ``smtp_auth(session, rest)`` — the AUTH command;
* ``warn_cleartext(app)`` — at start-up, a warning when PLAIN or LOGIN is
  offered and no TLS plugin is active.

The AUTH command, checks in this order (replies carry enhanced status codes
after EHLO):

* the ``auth_parse`` hook may supply its own parser; a parse failure or no
  mechanism: ``501 Syntax error in command``;
* AUTH already succeeded: ``503 but you already said AUTH ...``; after HELO:
  ``503 AUTH not defined for HELO``; before any greeting: ``503 please say
  hello first ...``; STARTTLS required first: ``503 SSL/TLS required before
  AUTH``; inside a mail transaction (RFC 4954 4): ``503 AUTH not permitted
  during a mail transaction``; mechanism not offered: ``504 Unimplemented
  authentication mechanism: <mech>``;
* the exchange: PLAIN (initial response or a ``334 `` prompt; ``=`` is an
  empty response), LOGIN (``334 VXNlcm5hbWU6`` / ``334 UGFzc3dvcmQ6``; the
  username may come as initial response), CRAM-MD5 (challenge
  ``<random.hextime@me>`` base64 encoded; answer ``user hexdigest``; no
  initial response allowed). A ``*`` line: ``501 Authentication canceled``.
  Not base64: ``501 Cannot Base64-decode Client responses``. A response line
  over 12288 bytes: ``500 Authentication Exchange line is too long``.
  Malformed PLAIN, an empty user or password, or a user name with control
  characters: ``535 Authentication invalid`` (PLAIN with a different
  authorization identity: ``535 Authentication invalid for <user>``).
  CRAM-MD5 answer without both parts: ``504 Invalid authentication string``.
  Continuation lines are read with the command timeout (the original waited
  forever): ``421`` on expiry;
* the hooks ``auth-<mech>``, then, when those declined, ``auth``; each gets
  ``(mechanism, user, password, digest, ticket)`` — the password for PLAIN
  and LOGIN, the client's hex digest and the challenge for CRAM-MD5;
* ``OK``: ``235 <MECH> authentication successful for <user>[ - <msg>]``; the
  connection becomes a relay client, ``auth_user``/``auth_mechanism`` are
  set (the Received header says ``ESMTPA``, Authentication-Results
  ``auth=pass``), a pending deferred rejection (note ``naughty``) is
  cleared;
* ``DENYSOFT`` (also a plugin that raised): ``454 Temporary authentication
  failure[ - <msg>]`` (RFC 4954; the original answered 535);
* anything else, ``DECLINED`` included: after ``config/auth_failure_delay``
  seconds (default 2; the original answered at once),
  ``535 <MECH> authentication failed for <user> from <ip>[ - <msg>]``; the
  client may try again. ``DENY_DISCONNECT``/``DENYSOFT_DISCONNECT`` also
  close the connection.

Passwords are never logged. ``python3 -m qpsmtpd.auth hash`` prints a
password hash for the SQL-backed auth plugins (see ``hash_password``).
"""

import base64
import binascii
import os
import sys
import time
import warnings

# hashlib, hmac and secrets (OpenSSL's libcrypto, several milliseconds) are
# imported by the functions that check or make passwords: a plugin that
# imports this module does not slow every connection's start-up.

from .constants import (
    DECLINED, DENY, DENY_DISCONNECT, DENYSOFT, DENYSOFT_DISCONNECT, LOGERROR,
    LOGINFO, LOGWARN, OK)

MECHANISMS = ("plain", "login", "cram-md5")   # advertised in this order
RESPONSE_LIMIT = 12288 + 2                     # RFC 4954 4: 12288 octets + CRLF
DEFAULT_FAILURE_DELAY = 2.0
PBKDF2_ROUNDS = 600000


class _Refusal(Exception):
    """The exchange ends with this reply (code, text, enhanced status code)."""

    def __init__(self, code, text, esc):
        super().__init__(text)
        self.code, self.text, self.esc = code, text, esc


# -- what the engine asks ------------------------------------------------------

def mechanisms(dispatcher):
    """Mechanisms to advertise, upper case, in the fixed order."""
    if dispatcher.has_hook("auth"):
        return [m.upper() for m in MECHANISMS]
    return [m.upper() for m in MECHANISMS if dispatcher.has_hook("auth-" + m)]


def tls_required(session):
    """True while STARTTLS is offered but unused and tls_before_auth is on."""
    connection = session.connection
    if connection.tls:
        return False
    offered = connection.notes.get("tls_offered") or \
        session.transaction.notes.get("tls_enabled")
    return bool(offered) and session.app.config.get_bool("tls_before_auth", True)


def warn_cleartext(app):
    """Log a warning when PLAIN/LOGIN are offered and no plugin offers TLS."""
    offered = [m for m in mechanisms(app.dispatcher) if m in ("PLAIN", "LOGIN")]
    if not offered:
        return
    for plugin in app.dispatcher.plugins:
        if getattr(plugin, "offers_tls", False) and not getattr(plugin, "_disabled", False):
            return
    app.log(LOGWARN, f"AUTH {' '.join(offered)} is offered but no TLS: "
                     "passwords would cross the network in clear (load the tls "
                     "plugin, see qpsmtpd --plugin-doc tls)")


# -- the AUTH command -----------------------------------------------------------

def smtp_auth(session, rest):
    """Serve one AUTH command on ``session`` (see the module docstring)."""
    parsed = _parse(session, rest)
    if parsed is None:
        return
    mechanism, initial = parsed
    connection = session.connection
    refusal = None
    if connection.auth_user:
        refusal = (503, "but you already said AUTH ...", "5.5.1")
    elif connection.hello == "helo":
        refusal = (503, "AUTH not defined for HELO", "5.5.1")
    elif not connection.hello:
        refusal = (503, "please say hello first ...", "5.5.1")
    elif tls_required(session):
        refusal = (503, "SSL/TLS required before AUTH", "5.7.0")
    elif session.transaction.sender is not None:
        refusal = (503, "AUTH not permitted during a mail transaction", "5.5.1")
    elif mechanism.upper() not in mechanisms(session.app.dispatcher):
        refusal = (504, f"Unimplemented authentication mechanism: {mechanism}", "5.5.4")
    if refusal:
        code, text, esc = refusal
        return session.respond(code, text, esc=esc)
    try:
        user, password, digest, ticket = _EXCHANGES[mechanism](session, initial)
        _check_user(user)
        if password is not None and not password:
            raise _Refusal(535, "Authentication invalid", "5.7.8")
    except _Refusal as refused:
        if refused.code == 535:
            connection.notes["auth_failed"] = 1
        return session.respond(refused.code, refused.text, esc=refused.esc)
    result = session.run_hooks("auth-" + mechanism, mechanism, user, password,
                               digest, ticket)
    if result.code == DECLINED and session.app.dispatcher.has_hook("auth"):
        result = session.run_hooks("auth", mechanism, user, password, digest, ticket)
    suffix = f" - {' '.join(result.messages)}" if result.messages else ""
    if result.code == OK:
        return _succeeded(session, mechanism, user, suffix)
    connection.notes["auth_failed"] = 1
    if result.code in (DENYSOFT, DENYSOFT_DISCONNECT):
        session.respond(454, "Temporary authentication failure" + suffix, esc="4.7.0")
    else:
        time.sleep(_failure_delay(session))
        session.respond(535, f"{mechanism.upper()} authentication failed for {user} "
                             f"from {connection.remote_ip}{suffix}", esc="5.7.8")
    if result.code in (DENY_DISCONNECT, DENYSOFT_DISCONNECT):
        session.disconnect()


def _parse(session, rest):
    """(mechanism lower case, initial response or None), or None after a 501."""
    parsed = session.run_hooks("auth_parse", rest)
    if parsed.values and callable(parsed.values[0]):
        try:
            code, *values = parsed.values[0](session, "auth", rest)
        except Exception as exc:
            session.log(LOGERROR, f"auth_parse failed: {exc!r}")
            code, values = DENY, ["Failed to parse line"]
        if code != OK or not values or not values[0]:
            session.respond(501, (values[0] if values and code != OK else "") or
                            "Syntax error in command", esc="5.5.2")
            return None
        return str(values[0]).lower(), (values[1] if len(values) > 1 else None)
    words = rest.split()
    if not 1 <= len(words) <= 2:
        session.respond(501, "Syntax error in command", esc="5.5.2")
        return None
    return words[0].lower(), (words[1] if len(words) > 1 else None)


def _succeeded(session, mechanism, user, suffix):
    connection = session.connection
    # clone() (STARTTLS) gives back what relay_client was before AUTH.
    connection.notes["relay_client_before_auth"] = connection.relay_client
    connection.relay_client = True
    connection.auth_user = user
    connection.auth_mechanism = mechanism
    if connection.notes.get("naughty"):
        connection.notes["naughty"] = 0
        session.log(LOGINFO, "auth success cleared naughty")
    session.respond(235, f"{mechanism.upper()} authentication successful for "
                         f"{user}{suffix}", esc="2.7.0")


def _failure_delay(session):
    text = session.app.config.get("auth_failure_delay")
    if text is None:
        return DEFAULT_FAILURE_DELAY
    try:
        return max(0.0, min(float(text), 60.0))
    except ValueError:
        session.log(LOGWARN, f"config: auth_failure_delay: ignoring {text!r}, "
                             "expected seconds")
        return DEFAULT_FAILURE_DELAY


def _check_user(user):
    # The user name is echoed in replies and written to headers and logs.
    if not user or any(ord(ch) < 32 or ord(ch) == 127 for ch in user):
        raise _Refusal(535, "Authentication invalid", "5.7.8")


# -- the mechanisms ---------------------------------------------------------------

def _plain(session, initial):
    response = _decode(initial if initial is not None else _ask(session, ""))
    parts = response.split("\0")
    if len(parts) != 3:
        raise _Refusal(535, "Authentication invalid", "5.7.8")
    authzid, user, password = parts
    if not user:
        if authzid:
            _check_user(authzid)      # echoed in the reply
        raise _Refusal(535, "Authentication invalid" +
                       (f" ({authzid})" if authzid else ""), "5.7.8")
    if authzid and authzid != user:
        _check_user(user)             # echoed in the reply
        raise _Refusal(535, f"Authentication invalid for {user}", "5.7.8")
    return user, password, None, None


def _login(session, initial):
    user = _decode(initial if initial is not None else _ask(session, "VXNlcm5hbWU6"))
    _check_user(user)
    password = _decode(_ask(session, "UGFzc3dvcmQ6"))
    return user, password, None, None


def _cram_md5(session, initial):
    if initial is not None:
        raise _Refusal(501, "CRAM-MD5 takes no initial response", "5.5.2")
    import secrets
    ticket = f"<{secrets.randbits(32):x}.{int(time.time()):x}@{session.me}>"
    response = _decode(_ask(session, base64.b64encode(ticket.encode()).decode()))
    user, _, digest = response.strip().rpartition(" ")
    if not user or not digest:
        raise _Refusal(504, "Invalid authentication string", "5.5.4")
    return user, None, digest.lower(), ticket


_EXCHANGES = {"plain": _plain, "login": _login, "cram-md5": _cram_md5}


def _ask(session, challenge):
    """Send ``334 <challenge>`` and read the client's line (without CR LF)."""
    reply = f"334 {challenge}"
    session.log(LOGINFO, reply)
    session.io.write(reply.encode("ascii") + b"\r\n")
    line = session.io.read_line(RESPONSE_LIMIT)
    if not line.endswith(b"\n"):
        if len(line) < RESPONSE_LIMIT:
            raise ConnectionResetError("client closed the connection during AUTH")
        while True:
            piece = session.io.read_line(RESPONSE_LIMIT)
            if not piece or piece.endswith(b"\n"):
                break
        raise _Refusal(500, "Authentication Exchange line is too long", "5.5.6")
    return line.rstrip(b"\r\n").decode("ascii", "replace")


def _decode(text):
    """A client response: ``*`` cancels, ``=`` is empty, else strict base64."""
    text = text.strip()
    if text == "*":
        raise _Refusal(501, "Authentication canceled", "5.7.0")
    if text == "=":
        return ""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _Refusal(501, "Cannot Base64-decode Client responses", "5.5.2") from None
    return raw.decode("utf-8", "surrogateescape")


# -- password checks for auth plugins --------------------------------------------

def validate_password(plugin, src_clear=None, src_crypt=None, attempt_clear=None,
                      attempt_hash=None, method=None, ticket=None, deny=DENY):
    """qpsmtpd's ``validate_password``: compare an attempt with what is stored.

    ``src_clear`` is a stored clear-text password, ``src_crypt`` a stored
    hash (see ``check_password_hash``); ``attempt_clear`` the password the
    client sent (PLAIN, LOGIN), ``attempt_hash`` its CRAM-MD5 digest of
    ``ticket``. Returns ``(OK, <plugin>)``; ``(deny, "<plugin> - no such
    user")`` when nothing is stored; ``DECLINED`` for CRAM-MD5 without a
    stored clear text (nothing to compute the digest from); else ``(deny,
    "<plugin> - wrong password")``. ``<plugin>`` is the plugin's file name
    (``auth_flat_file``). Comparisons take constant time.
    """
    import hashlib
    import hmac
    name = plugin.config_name.rsplit("/", 1)[-1].split(":", 1)[0]
    if not src_clear and not src_crypt:
        plugin.log(LOGINFO, "fail, no such user")
        return deny, f"{name} - no such user"
    if (method or "").lower() == "cram-md5" or attempt_hash is not None:
        if not src_clear:
            plugin.log(LOGINFO, "skip, CRAM-MD5 needs a clear-text password")
            return DECLINED
        if attempt_hash and ticket:
            expected = hmac.new(_bytes(src_clear), _bytes(ticket), hashlib.md5).hexdigest()
            if hmac.compare_digest(expected, str(attempt_hash).lower()):
                plugin.log(LOGINFO, "pass, CRAM-MD5 digest matches")
                return OK, name
    elif attempt_clear:
        if src_clear and hmac.compare_digest(_bytes(src_clear), _bytes(attempt_clear)):
            plugin.log(LOGINFO, "pass, clear-text password matches")
            return OK, name
        if src_crypt and check_password_hash(src_crypt, attempt_clear, plugin.log):
            plugin.log(LOGINFO, "pass, password hash matches")
            return OK, name
    plugin.log(LOGINFO, "fail, wrong password")
    return deny, f"{name} - wrong password"


def check_password_hash(stored, password, log=None):
    """True when ``password`` matches the stored hash ``stored``.

    Schemes: ``$pbkdf2-sha256$``, ``$pbkdf2-sha512$`` and ``$pbkdf2$``
    (SHA-1) in passlib's format (``$pbkdf2-sha256$<rounds>$<salt>$<digest>``,
    salt and digest in base64 with ``.`` for ``+`` and no padding), made by
    ``hash_password``; and every crypt(3) scheme of the system's libcrypt
    (``$6$`` SHA-512, ``$5$``, ``$y$`` yescrypt, ``$2b$`` bcrypt, ``$1$``,
    DES) through Python's ``crypt`` module, which exists up to Python 3.12
    (on later versions those hashes never match and an error is logged).
    """
    stored = str(stored).strip()
    if stored.startswith("$pbkdf2"):
        return _check_pbkdf2(stored, password)
    crypt = _crypt_module()
    if crypt is None:
        if log is not None:
            log(LOGERROR, "error, crypt(3) hashes need Python's crypt module "
                          "(Python 3.12 or older)")
        return False
    try:
        computed = crypt.crypt(password, stored)
    except (OSError, ValueError):
        computed = None
    import hmac
    return bool(computed) and hmac.compare_digest(computed, stored)


_PBKDF2_DIGESTS = {"pbkdf2": ("sha1", 20), "pbkdf2-sha256": ("sha256", 32),
                   "pbkdf2-sha512": ("sha512", 64)}


def hash_password(password, rounds=PBKDF2_ROUNDS, salt=None):
    """A ``$pbkdf2-sha256$`` hash of ``password`` (passlib-compatible)."""
    import hashlib
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha256", _bytes(password), salt, rounds)
    return f"$pbkdf2-sha256${rounds}${_ab64(salt)}${_ab64(digest)}"


def _check_pbkdf2(stored, password):
    fields = stored.split("$")
    if len(fields) != 5 or fields[1] not in _PBKDF2_DIGESTS:
        return False
    algorithm, size = _PBKDF2_DIGESTS[fields[1]]
    try:
        rounds = int(fields[2])
        salt, expected = _ab64_decode(fields[3]), _ab64_decode(fields[4])
    except (ValueError, binascii.Error):
        return False
    if not 0 < rounds <= 10_000_000 or len(expected) != size:
        return False
    import hashlib
    import hmac
    digest = hashlib.pbkdf2_hmac(algorithm, _bytes(password), salt, rounds)
    return hmac.compare_digest(digest, expected)


def _ab64(raw):
    return base64.b64encode(raw).decode().rstrip("=").replace("+", ".")


def _ab64_decode(text):
    text = text.replace(".", "+")
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _crypt_module():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt
    except ImportError:
        return None
    return crypt


def _bytes(text):
    return text if isinstance(text, bytes) else str(text).encode("utf-8", "surrogateescape")


def main(argv=None):
    """``python3 -m qpsmtpd.auth hash [--rounds N]``: read a password (from
    the terminal, or one line of stdin) and print its hash."""
    import argparse
    import getpass
    parser = argparse.ArgumentParser(prog="python3 -m qpsmtpd.auth")
    commands = parser.add_subparsers(dest="command", required=True)
    hasher = commands.add_parser("hash", help="print a $pbkdf2-sha256$ password hash")
    hasher.add_argument("--rounds", type=int, default=PBKDF2_ROUNDS)
    options = parser.parse_args(argv)
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        sys.stderr.write("empty password refused\n")
        return 1
    print(hash_password(password, options.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
