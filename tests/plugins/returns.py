"""Test plugin: return a fixed verdict from one hook.

Arguments: ``HOOK CODE [message words...]``. ``CODE`` is a return-code name
(``DENY``, ``OK`` ...), ``raise`` (the hook raises), ``none`` (returns
None), ``bogus`` (returns 123456) or ``sleep:N``. Every call is recorded in
the connection note ``returns_calls`` as ``(hook, args)``.
"""

import time

from qpsmtpd.constants import HOOKS, return_code
from qpsmtpd.plugin import Plugin


class Returns(Plugin):
    def register(self, hook, code, *message):
        if hook not in HOOKS:
            raise ValueError(f"unknown hook {hook}")
        self.verdict = code
        self.message = " ".join(message).replace("\\n", "\n") or None
        self.register_hook(hook, self.answer)

    def answer(self, session, *args):
        if session is not None and hasattr(session, "connection"):
            session.connection.notes.setdefault("returns_calls", []).append(args)
        if self.verdict == "raise":
            raise RuntimeError("plugin failure on purpose")
        if self.verdict == "none":
            return None
        if self.verdict == "bogus":
            return 123456
        if self.verdict.startswith("sleep:"):
            time.sleep(float(self.verdict[6:]))
            return None
        code = return_code(self.verdict)
        return (code, self.message) if self.message else code
