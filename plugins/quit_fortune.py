"""quit_fortune - a fortune cookie in the reply to QUIT.

When the client greeted with ``HELO`` (or not at all) and
``/usr/games/fortune`` is an executable file, QUIT is answered with

  221-<me> closing connection.
  221-  / <first line of `fortune -s`>
  221   / <last line>

and the connection closes as usual. Clients that said ``EHLO`` are
"probably too sophisticated to enjoy the fun" and get the normal
``221 <me> closing connection. Have a wonderful day.``, as does everybody
when fortune is missing, fails, or takes longer than 5 seconds
(LOGERROR ``error, fortune failed: <reason>``).

No arguments, no config files. Debian/Ubuntu: ``apt-get install fortune-mod``
(the program lands in /usr/games).

Example ``config/plugins`` line::

  quit_fortune
"""

import os
import subprocess

from qpsmtpd.constants import DECLINED, DONE
from qpsmtpd.plugin import Plugin

FORTUNE = "/usr/games/fortune"
TIMEOUT = 5


class QuitFortune(Plugin):
    def hook_quit(self, session):
        if session.connection.hello == "ehlo":
            return DECLINED
        if not (os.path.isfile(FORTUNE) and os.access(FORTUNE, os.X_OK)):
            return DECLINED
        try:
            result = subprocess.run([FORTUNE, "-s"], capture_output=True,
                                    timeout=TIMEOUT, check=True)
        except (OSError, subprocess.SubprocessError) as exc:
            self.log_error(f"fortune failed: {exc}")
            return DECLINED
        text = result.stdout.decode("utf-8", "replace").replace("\r", "")
        cookie = ["  / " + line for line in text.rstrip("\n").split("\n")]
        session.respond(221, f"{session.me} closing connection.", *cookie)
        return DONE
