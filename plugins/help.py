"""help - answer HELP from text files.

Without this plugin ``HELP`` gets qpsmtpd's three built-in lines. With it:

* ``HELP`` -> ``214 Try 'HELP COMMAND' for getting help on COMMAND``;
* ``HELP <command>`` -> ``214`` with the lines of that command's help file;
  ``214 No help available for SMTP command: <command>`` when there is no
  file, or it is empty or unreadable (LOGERROR
  ``failed to open help file for <command>: <error>``);
* a command name that is not one word (letters, digits, ``_``) ->
  ``502 Invalid command name`` — so ``HELP ../../etc/passwd`` reads nothing;
* with ``not_implemented 1``, every HELP -> ``502 Not implemented.``

The text after HELP is taken as one name (lower-cased), as in the original:
``HELP mail from`` is an invalid name. Blank lines inside a help file are
sent as a single space, so the reply does not end at the first paragraph
(the original's reply stopped there).

Arguments (``key value`` pairs):

  not_implemented 1     answer every HELP with 502 Not implemented.
  help_dir <dir>        help for COMMAND is the file ``<dir>/<command>``
                        (lower-case name). Default ``./help/`` when the
                        plugin is listed without any argument.
  <COMMAND> <file>      the help for COMMAND is <file>. A name without ``/``
                        is looked up in the help directory (``help_dir``,
                        else ``./help/``; the original looked in
                        ``help/help/`` by mistake). A file that does not
                        exist at start-up is skipped (LOGWARN
                        ``No help file for command '<COMMAND>'``).

Keys that are not one word are ignored (LOGWARN ``Invalid argument for the
'help' plugin <key>``); file names may hold only letters, digits and
``_ . - /`` (LOGERROR ``Invalid characters in filename for command <key>``).

Example ``config/plugins`` lines::

  help help_dir /etc/qpsmtpd/help
  help not_implemented 1
  help MAIL /etc/qpsmtpd/help-mail.txt RCPT rcpt.txt
"""

import os
import re

from qpsmtpd.constants import DONE, LOGERROR, LOGWARN, OK
from qpsmtpd.plugin import Plugin

_WORD = re.compile(r"\w+\Z", re.ASCII)
_FILENAME = re.compile(r"[\w.\-/]+\Z", re.ASCII)
DEFAULT_HELP_DIR = "./help/"


class Help(Plugin):
    def register(self, *args):
        self.args = self.parse_args(args)
        self.not_implemented = False
        self.help_dir = DEFAULT_HELP_DIR if not args else None
        self.files = {}
        topics = {}
        for key, value in self.args.items():
            if not _WORD.match(key):
                self.log(LOGWARN, f"Invalid argument for the 'help' plugin {key}")
            elif key == "not_implemented":
                self.not_implemented = value not in ("", "0")
            elif not _FILENAME.match(value):
                self.log(LOGERROR, f"Invalid characters in filename for command {key}")
            elif key == "help_dir":
                self.help_dir = value
            elif key != "loglevel":
                topics[key] = value
        for command, name in topics.items():
            path = name if "/" in name else os.path.join(
                self.help_dir or DEFAULT_HELP_DIR, name)
            if not os.path.exists(path):
                self.log(LOGWARN, f"No help file for command '{command}'")
                continue
            self.files[command.lower()] = path

    def hook_help(self, session, rest):
        if self.not_implemented:
            session.respond(502, "Not implemented.")
            return DONE
        command = rest.strip().lower()
        if not command:
            return OK, "Try 'HELP COMMAND' for getting help on COMMAND"
        if not _WORD.match(command):
            session.respond(502, "Invalid command name")
            return DONE
        path = self.files.get(command)
        if path is None and self.help_dir:
            candidate = os.path.join(self.help_dir, command)
            if os.path.exists(candidate):
                path = candidate
        text = self.read_help(path, command) if path else ""
        lines = text.replace("\r", "").rstrip("\n").split("\n") if text else []
        if not any(lines):
            return OK, f"No help available for SMTP command: {command}"
        return (OK, *[line or " " for line in lines])

    def read_help(self, path, command):
        try:
            with open(path, "rb") as handle:
                return handle.read().decode("utf-8", "replace")
        except OSError as exc:
            self.log(LOGERROR, f"failed to open help file for {command}: {exc.strerror}")
            return ""
