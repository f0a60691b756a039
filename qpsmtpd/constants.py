"""Hook return codes, log levels and the master hook list.

The numbers are qpsmtpd's (``lib/Qpsmtpd/Constants.pm``) so that a code logged
by us reads the same as one logged by the Perl daemon.

* ``Code`` — what a hook returns: ``OK``, ``DENY``, ``DENYSOFT``,
  ``DENY_DISCONNECT`` (alias ``DENYHARD``), ``DENYSOFT_DISCONNECT``,
  ``DECLINED``, ``DONE``.
* ``Level`` — log levels, ``LOGDEBUG`` (7) down to ``LOGEMERG`` (0); a message
  is emitted when its level is <= the threshold.
* ``HOOKS`` — every hook name, in the order qpsmtpd registers ``hook_*``
  methods. A name outside this list is refused by ``register_hook``.
"""

import enum


class Code(enum.IntEnum):
    """A hook's verdict."""

    OK = 900
    DENY = 901
    DENYSOFT = 902
    DENY_DISCONNECT = 903
    DENYSOFT_DISCONNECT = 904
    DECLINED = 909
    DONE = 910

    @property
    def is_deny(self):
        """True for the four rejecting codes (the ``deny`` hook sees these)."""
        return self in _DENY_CODES

    @property
    def disconnects(self):
        return self in (Code.DENY_DISCONNECT, Code.DENYSOFT_DISCONNECT)

    @property
    def is_temporary(self):
        return self in (Code.DENYSOFT, Code.DENYSOFT_DISCONNECT)


_DENY_CODES = frozenset(
    (Code.DENY, Code.DENYSOFT, Code.DENY_DISCONNECT, Code.DENYSOFT_DISCONNECT))

OK = Code.OK
DENY = Code.DENY
DENYSOFT = Code.DENYSOFT
DENY_DISCONNECT = Code.DENY_DISCONNECT
DENYHARD = Code.DENY_DISCONNECT
DENYSOFT_DISCONNECT = Code.DENYSOFT_DISCONNECT
DECLINED = Code.DECLINED
DONE = Code.DONE


class Level(enum.IntEnum):
    """qpsmtpd's log levels (syslog priorities)."""

    LOGEMERG = 0
    LOGALERT = 1
    LOGCRIT = 2
    LOGERROR = 3
    LOGWARN = 4
    LOGNOTICE = 5
    LOGINFO = 6
    LOGDEBUG = 7


LOGEMERG = Level.LOGEMERG
LOGRADAR = Level.LOGEMERG
LOGALERT = Level.LOGALERT
LOGCRIT = Level.LOGCRIT
LOGERROR = Level.LOGERROR
LOGWARN = Level.LOGWARN
LOGNOTICE = Level.LOGNOTICE
LOGINFO = Level.LOGINFO
LOGDEBUG = Level.LOGDEBUG


def return_code(value):
    """Name -> Code, or number -> name (``'DENY_DISCONNECT'`` for 903).

    Returns None for anything that is not exactly a known code.
    """
    if isinstance(value, str):
        name = value.strip().upper()
        if name == "DENYHARD":
            return Code.DENY_DISCONNECT
        return Code.__members__.get(name)
    try:
        return Code(value).name
    except ValueError:
        return None


def log_level(value):
    """Name -> level number (``'LOGINFO'`` -> 6, ``'INFO'`` too), number -> name."""
    if isinstance(value, str):
        name = value.strip().upper()
        if name == "LOGRADAR":
            return Level.LOGEMERG
        if not name.startswith("LOG"):
            name = "LOG" + name
        if name == "LOGWARNING":
            name = "LOGWARN"
        if name == "LOGERR":
            name = "LOGERROR"
        return Level.__members__.get(name)
    try:
        return Level(value).name
    except ValueError:
        return None


HOOKS = (
    "logging",
    "config",
    "user_config",
    "post-fork",
    "pre-connection",
    "connect",
    "ehlo_parse",
    "ehlo",
    "helo_parse",
    "helo",
    "auth_parse",
    "auth",
    "auth-plain",
    "auth-login",
    "auth-cram-md5",
    "rcpt_parse",
    "rcpt_pre",
    "rcpt",
    "mail_parse",
    "mail",
    "mail_pre",
    "data",
    "data_headers_end",
    "data_post_headers",
    "data_post",
    "queue_pre",
    "queue",
    "queue_post",
    "vrfy",
    "noop",
    "quit",
    "reset_transaction",
    "disconnect",
    "post-connection",
    "unrecognized_command",
    "deny",
    "ok",
    "received_line",
    "help",
)

# Hooks run without per-plugin tracing and without deny/ok follow-ups.
NO_RESPOND_HOOKS = frozenset(("logging", "config", "user_config", "deny", "ok"))


def hook_method_name(hook):
    """``'auth-cram-md5'`` -> ``'hook_auth_cram_md5'``."""
    return "hook_" + "".join(c if c.isalnum() or c == "_" else "_" for c in hook)
