"""rcpt_map - decide the recipients of one domain from a map file.

For recipients in the domain given by ``domain``, the map file says what
happens; recipients in other domains are left to later plugins (DECLINED).
Map lines are ``address CONSTANT [message]``; ``#`` starts a comment line::

  # map for example.org
  me@example.org       OK
  you@example.org      OK
  info@example.org     DENY     User not found.

CONSTANT is a return-code name (``OK``, ``DENY``, ``DENYSOFT``,
``DENY_DISCONNECT``, ``DENYSOFT_DISCONNECT``, ``DECLINED``); the message
defaults to ``No such user.``. Addresses are compared in lower case. A
recipient of the domain that is not in the map gets the ``default``
result: ``550 No such user.`` unless configured.

Arguments:

  domain NAME            required: the domain this map covers
  file PATH              required: the map file (relative to the working
                         directory; ``~`` is expanded)
  default CODE[=MSG]     result for addresses missing from the map; default
                         ``DENY=No_such_user.`` (``_`` in MSG becomes a space)

The map is read when the plugin loads (a missing or empty map stops
start-up) and read again when the file's modification time changed: at
each connection (the ``connect`` hook, in the process serving it, so a
worker that serves many connections sees the edit) and in the
forkserver's ``pre-connection`` hook (so new workers start with it). A
map that became empty or unreadable keeps the previous one (logged).

Fixed on purpose: each ``rcpt_map`` line keeps its own map (the original
shared one map between all instances, so two domains could not be
mapped); map addresses are lower-cased like the recipient (the original
never matched an address written with capitals); ``DONE`` is refused as a
constant (the client would get no reply).

Example ``config/plugins`` lines::

  rcpt_map domain example.org file /etc/qpsmtpd/map_example_org
  rcpt_map domain example.net file /etc/qpsmtpd/map_example_net default DENYSOFT=Try_later
"""

import os

from qpsmtpd.constants import DECLINED, DENY, DONE, LOGDEBUG, LOGERROR, return_code
from qpsmtpd.plugin import Plugin, PluginError

DEFAULT_MESSAGE = "No such user."


class RcptMap(Plugin):
    def register(self, *args):
        self.args = self.parse_args(args)
        self.default = (DENY, DEFAULT_MESSAGE)
        if "default" in self.args:
            code_text, _, message = self.args["default"].partition("=")
            code = return_code(code_text)
            if code is None or code == DONE:
                raise PluginError(f"{self.config_name}: Not a valid constant for "
                                  f"'default' arg: {self.args['default']}")
            self.default = (code, message.replace("_", " ") or DEFAULT_MESSAGE)
        if not self.args.get("file"):
            raise PluginError(f"{self.config_name}: No map file given...")
        if not self.args.get("domain"):
            raise PluginError(f"{self.config_name}: No domain name given...")
        self.path = self.tildeexp(self.args["file"])
        self.domain = self.args["domain"].lower()
        self.log(LOGDEBUG, f"Using map {self.path} for domain {self.domain}")
        self.mtime = self._mtime()
        try:
            self.map = self.read_map()
        except OSError as exc:
            raise PluginError(f"{self.config_name}: ERROR opening {self.path}: "
                              f"{exc.strerror or exc}") from exc
        if not self.map:
            raise PluginError(f"{self.config_name}: Empty map file {self.path}")

    def hook_pre_connection(self, session, info):
        self.refresh()
        return DECLINED

    def hook_connect(self, session):
        self.refresh()
        return DECLINED

    def refresh(self):
        """Read the map again when the file changed (a cache of the file,
        the same for every connection of this process)."""
        mtime = self._mtime()
        if mtime == self.mtime:
            return
        self.mtime = mtime
        try:
            fresh = self.read_map()
        except OSError as exc:
            self.log(LOGERROR, f"cannot read {self.path}: {exc.strerror or exc}; "
                               "keeping the previous map")
            return
        if not fresh:
            self.log(LOGERROR, f"empty map file {self.path}; keeping the previous map")
            return
        self.map = fresh

    def hook_rcpt(self, session, recipient, params):
        if not recipient.host or not recipient.user:
            return DECLINED
        if recipient.host.lower() != self.domain:
            return DECLINED
        rcpt = f"{recipient.user}@{recipient.host}".lower()
        code, message = self.map.get(rcpt, self.default)
        if code.is_deny:
            self.log_fail(rcpt if rcpt in self.map else f"{rcpt} not in map")
        elif code != DECLINED:
            self.log_pass(rcpt)
        return code, message

    def read_map(self):
        """``{address: (code, message)}`` from the map file; raises OSError."""
        entries = {}
        with open(self.path, encoding="utf-8", errors="surrogateescape") as handle:
            for number, line in enumerate(handle, 1):
                words = line.split(None, 2)
                if not words or words[0].startswith("#"):
                    continue
                if len(words) < 2:
                    self.log(LOGERROR, f"No constant in line {number} in {self.path}")
                    continue
                code = return_code(words[1])
                if code is None or code == DONE:
                    self.log(LOGERROR, f"Not a valid constant in line {number} "
                                       f"in {self.path}")
                    continue
                message = words[2].strip() if len(words) > 2 else ""
                entries[words[0].lower()] = (code, message or DEFAULT_MESSAGE)
        return entries

    def _mtime(self):
        """What tells a changed file: modification time, size and inode."""
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino
