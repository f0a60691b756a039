"""Test plugin: a broken plugin, for the fault tests.

Arguments: ``HOOK MODE [helo NAME]``. ``MODE`` is one of

* ``raise`` — the hook raises ``RuntimeError``;
* ``garbage`` — returns the string ``"OK please"``;
* ``true`` — returns ``True`` (a bool is not a return code);
* ``unhashable`` — returns ``([1], "message")``;
* ``hang:N`` — blocks for ``N`` seconds (``hang:forever``: until the
  process ends), waiting on ``self.release``, an ``Event`` a test may set
  to let a stuck thread go; then returns ``OK``.

With ``helo NAME`` the plugin misbehaves only in sessions whose HELO/EHLO
name is ``NAME`` and declines otherwise, so one daemon can serve good and
bad sessions. Every misbehaviour is logged first (``misbehaving: MODE``).
"""

import threading

from qpsmtpd.constants import HOOKS, OK
from qpsmtpd.plugin import Plugin


class Misbehave(Plugin):
    def register(self, hook, mode, *rest):
        if hook not in HOOKS:
            raise ValueError(f"unknown hook {hook}")
        self.mode = mode
        self.only_helo = rest[1] if len(rest) == 2 and rest[0] == "helo" else None
        self.release = threading.Event()
        self.register_hook(hook, self.misbehave)

    def misbehave(self, session, *args):
        if self.only_helo is not None and \
                getattr(session.connection, "hello_host", None) != self.only_helo:
            return None
        self.log(2, f"misbehaving: {self.mode}")
        if self.mode == "raise":
            raise RuntimeError("broken on purpose")
        if self.mode == "garbage":
            return "OK please"
        if self.mode == "true":
            return True
        if self.mode == "unhashable":
            return ([1], "message")
        if self.mode.startswith("hang:"):
            seconds = self.mode[5:]
            self.release.wait(None if seconds == "forever" else float(seconds))
            return OK
        raise ValueError(f"unknown mode {self.mode}")
