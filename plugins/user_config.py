"""user_config - per-recipient configuration files in the user's directory.

Answers the ``user_config`` hook, which asks for configuration ``<name>``
belonging to one address (``address.config(name)`` in qpsmtpd): the value
is every line of the file ``<directory>/<name>``, newlines removed and
nothing else filtered (comments and blank lines included, as in the
original). No file -> DECLINED, so the next plugin or the global config
answers. A file that exists but cannot be read logs LOGNOTICE
``Couldn't open <file>:<reason>``.

Argument: the directory pattern (default ``/home/%u/.qpsmtpd``), where
``%u`` is the local part, ``%h`` the domain and ``%a`` the whole address
(``user@host``). Addresses whose parts would leave the directory (holding
``/``, or being ``.``/``..``) get DECLINED (LOGNOTICE
``skip, unsafe address <address> or name <name>``): the local part is chosen
by the client.

The hook answers ``(OK, [lines])``.

Example ``config/plugins`` lines::

  user_config
  user_config /var/qpsmtpd/users/%h/%u
"""

import os

from qpsmtpd.constants import DECLINED, LOGNOTICE, OK
from qpsmtpd.plugin import Plugin

DEFAULT_PATTERN = "/home/%u/.qpsmtpd"


class UserConfig(Plugin):
    def register(self, pattern=None, *extra):
        self.pattern = pattern or DEFAULT_PATTERN

    def hook_user_config(self, session, address, name):
        user = address.user or ""
        host = address.host or ""
        full = address.address()
        for part in (user, host, full, name):
            if "/" in part or "\0" in part or part in (".", ".."):
                self.log(LOGNOTICE, f"skip, unsafe address {full} or name {name}")
                return DECLINED
        path = (self.pattern.replace("%u", user).replace("%h", host)
                .replace("%a", full))
        filename = f"{path}/{name}"
        if not os.path.isfile(filename):
            return DECLINED
        try:
            with open(filename, "rb") as handle:
                text = handle.read().decode("utf-8", "surrogateescape")
        except OSError as exc:
            self.log(LOGNOTICE, f"Couldn't open {filename}:{exc.strerror}")
            return DECLINED
        lines = text.split("\n")
        if lines[-1] == "":
            lines.pop()
        return OK, lines
