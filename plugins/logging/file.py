"""logging/file - write log messages to a file or a command.

Each message at or below the plugin's level becomes one line::

  <strftime(tsformat)> <hostname>[<pid>]: <message>

for example ``Mon Jun 10 16:36:40 2024 mx1[4711]: dispatching QUIT``. The
message is written as logged, without the ``(<hook>) <plugin>:`` part of
the stderr format.

Arguments (``config/logging`` line)::

  logging/file [loglevel <level>] [reopen] [nosplit] [tsformat <format>] <path>

  loglevel <level>  highest level written: a number or a ``LOG*`` name
                    (default ``LOGWARN``)
  tsformat <fmt>    strftime format of the time stamp, one word
                    (default ``%a %b %d %T %Y``, like Perl's localtime)
  reopen            open the output again at the first line of every
                    connection (with a high level and a ``|command`` this
                    makes one alarm per connection)
  nosplit           within one connection, choose the output only at its
                    first line, so a connection's lines never spread over
                    two files when the name changes with the time
  <path>            the file, appended to and created if missing. It goes
                    through strftime(3) and is reopened whenever the result
                    changes (``qpsmtpd.log.%Y-%m-%d`` -> one file per day).
                    ``%i`` is the connection's session id,
                    ``<epoch>-<pid>-<n>`` (``parent`` outside a connection),
                    so ``%i`` gives one file per connection.
  |<command>        instead of a path: a shell command that reads the lines
                    on its stdin (the command goes through strftime too)

Several instances (``logging/file:0``, ``logging/file:1``) may write at
different levels to different places. Lines logged by this plugin itself
are skipped; an output that cannot be opened or written is reported once on
stderr (``Error opening log output to path <path>: <reason>``); lines are
dropped for the next 10 seconds, then it is tried again (so a command that
keeps dying is not started again for every line).

The session id is kept in the connection note ``logging-session-id`` (the
original kept it in the transaction, so after the first MAIL ``%i`` turned
into ``parent`` and a connection's lines landed in two files); the notes
``file-logged-this-session`` and ``file-reopened-this-session`` are also
per connection. The session id is made at the connection's first line
(``Connection from ...``), so all of a connection's lines go to its ``%i``
file. A missing path stops start-up.

Example ``config/logging`` lines::

  logging/file loglevel LOGINFO /var/log/qpsmtpd.log
  logging/file /var/log/qpsmtpd/%Y-%m-%d.log
  logging/file:1 loglevel LOGCRIT reopen |/usr/local/sbin/page-sysadmin
  logging/file loglevel LOGDEBUG tsformat %FT%T /var/log/qpsmtpd/%i.log
"""

import os
import socket
import subprocess
import time

from qpsmtpd.constants import DECLINED, LOGWARN
from qpsmtpd.log import write_stderr
from qpsmtpd.plugin import Plugin, PluginError

DEFAULT_TSFORMAT = "%a %b %d %T %Y"
RETRY_SECONDS = 10
REPORTED_LIMIT = 100    # failing outputs remembered (each reported once)
SESSION_NOTE = "logging-session-id"
LOGGED_NOTE = "file-logged-this-session"
REOPENED_NOTE = "file-reopened-this-session"


class File(Plugin):
    def register(self, *args):
        self.level = int(LOGWARN)
        self.tsformat = DEFAULT_TSFORMAT
        self.reopen = self.nosplit = False
        words = list(args)
        while words:
            option = words[0].lower()
            if option in ("loglevel", "tsformat"):
                if len(words) < 2:
                    raise PluginError(f"Malformed arguments to {self.config_name}: "
                                      f"{option} needs a value")
                if option == "loglevel":
                    self.level = self.level_argument(words[1])
                else:
                    self.tsformat = words[1]
                del words[:2]
            elif option in ("reopen", "nosplit"):
                setattr(self, option, True)
                del words[0]
            else:
                break
        output = " ".join(words).strip()
        if not output:
            raise PluginError(f"Malformed arguments to {self.config_name}: "
                              "no path or |command given")
        self.pipe = output.startswith("|")
        self.output_format = output[1:].strip() if self.pipe else output
        self.hostname = socket.gethostname()
        self._stream = None
        self._process = None
        self._current_output = ""
        self._reported = set()
        self._retry_after = 0.0

    def hook_logging(self, session, level, hook, plugin, message):
        notes = session.connection.notes if session is not None else None
        if session is not None:
            session.connection.id  # made at the first line, whatever its level
        if level > self.level or plugin == self.name:
            return DECLINED
        if self._stream is None and time.monotonic() < self._retry_after:
            return DECLINED
        if (self._stream is None or not self.nosplit or notes is None
                or not notes.get(LOGGED_NOTE)):
            if self.maybe_reopen(notes) is None:
                return DECLINED
            if notes is not None:
                notes[LOGGED_NOTE] = 1
        stamp = time.strftime(self.tsformat)
        self.write(f"{stamp} {self.hostname}[{os.getpid()}]: {message}\n")
        return DECLINED

    # -- the output ---------------------------------------------------------

    def log_output(self, notes):
        """The output name for now: ``%i`` and strftime expanded."""
        session_id = (notes.get(SESSION_NOTE) if notes is not None else None) or "parent"
        return time.strftime(self.output_format.replace("%i", session_id))

    def maybe_reopen(self, notes):
        """Open the output if needed: True if (re)opened, False if not, None on error."""
        output = self.log_output(notes)
        if (self._stream is None or output != self._current_output
                or (self.reopen and notes is not None and not notes.get(REOPENED_NOTE))):
            if not self.open_log(output):
                return None
            if notes is not None:
                notes[REOPENED_NOTE] = 1
            return True
        return False

    def open_log(self, output):
        self.close_output()
        try:
            if self.pipe:
                self._process = subprocess.Popen(output, shell=True, bufsize=0,
                                                 stdin=subprocess.PIPE)
                self._stream = self._process.stdin
            else:
                # unbuffered and O_APPEND: one write per line, so forked
                # workers sharing the file do not interleave within lines
                self._stream = open(output, "ab", buffering=0)
        except OSError as exc:
            kind = "command" if self.pipe else "path"
            self._report(output, f"Error opening log output to {kind} {output}: "
                                 f"{exc.strerror or exc}")
            return False
        self._current_output = output
        return True

    def write(self, line):
        try:
            data = line.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            data = line.encode("utf-8", "backslashreplace")
        try:
            self._stream.write(data)
        except (OSError, ValueError) as exc:
            output = self._current_output
            self._report(output, f"Error writing log output to {output}: {exc}")
            self.close_output()

    def close_output(self):
        """Close the file or the command's stdin (the command then ends)."""
        stream, process = self._stream, self._process
        self._stream = self._process = None
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass
        if process is not None:
            process.poll()

    def _report(self, output, text):
        self._retry_after = time.monotonic() + RETRY_SECONDS
        if output in self._reported:
            return
        if len(self._reported) >= REPORTED_LIMIT:
            # outputs named by session (%i) or date would otherwise pile up
            # for as long as the process lives
            self._reported.clear()
        self._reported.add(output)
        write_stderr(f"{os.getpid()} {self.name}: {text}")
