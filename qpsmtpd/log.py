"""Logging in qpsmtpd's line format.

Every component logs through one ``Log`` object per process::

    log(level, message, hook=None, plugin=None)

The line written is qpsmtpd's (§8.2 of the reference)::

    <pid> (<hook>) <plugin>: <message>     a plugin inside a hook
    <pid> <plugin>: <message>              a plugin outside a hook
    <pid> <message>                        the core

Pipeline, as in qpsmtpd: when at least one plugin is registered for the
``logging`` hook, every message goes to those plugins (each applies its own
threshold; they get the session this thread serves, or None outside a
connection) and the built-in output is off; otherwise the line goes to the
sink (stderr by default) when ``level <= log.level``. A plugin's own log
calls made from inside a ``logging`` hook are dropped, so a logging plugin
cannot recurse.

stderr is written line by line and flushed at once, so ``tail -f
log/main/current`` under multilog shows each line as it happens.
"""

import os
import sys
import threading

from .constants import LOGWARN


class Log:
    """The process's logger.

    ``sink`` is a callable taking one finished line (without newline); the
    default writes to stderr. ``level`` is the master threshold
    (``config/loglevel``). ``dispatcher`` is attached by the application once
    plugins are loaded; it provides ``has_hook(name)`` and
    ``run_logging(level, hook, plugin, message)``.
    """

    def __init__(self, sink=None, level=LOGWARN):
        self.sink = sink or _stderr_sink
        self.level = int(level)
        self.dispatcher = None
        self._state = threading.local()

    def bind_session(self, session):
        """Remember the session this thread serves (None to forget), so the
        ``logging`` hook can hand it to logging plugins."""
        self._state.session = session

    def current_session(self):
        return getattr(self._state, "session", None)

    def __call__(self, level, message, hook=None, plugin=None):
        level = int(level)
        dispatcher = self.dispatcher
        if dispatcher is not None and dispatcher.has_hook("logging"):
            state = self._state
            if getattr(state, "in_hook", False):
                return
            state.in_hook = True
            try:
                dispatcher.run_logging(level, hook, plugin, message)
            finally:
                state.in_hook = False
            return
        if level <= self.level:
            self.sink(format_line(message, hook, plugin))

    def enabled(self, level):
        """True when a message of ``level`` would be written somewhere.

        Lets callers skip building expensive messages. With logging plugins
        loaded every level is "enabled", since each plugin decides.
        """
        dispatcher = self.dispatcher
        if dispatcher is not None and dispatcher.has_hook("logging"):
            return True
        return level <= self.level


_pid = os.getpid()


def _forked():
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def current_pid():
    """``os.getpid()`` without a system call per log line (kept right
    across ``os.fork``)."""
    return _pid


def format_line(message, hook=None, plugin=None, pid=None):
    """One log line in qpsmtpd's format, without the newline."""
    pid = _pid if pid is None else pid
    if plugin:
        if hook:
            return f"{pid} ({hook}) {plugin}: {message}"
        return f"{pid} {plugin}: {message}"
    return f"{pid} {message}"


def write_stderr(line):
    """Write one line to stderr and flush; never raises."""
    stream = sys.stderr
    try:
        try:
            stream.write(line + "\n")
        except UnicodeEncodeError:
            stream.write(line.encode("ascii", "backslashreplace").decode("ascii") + "\n")
        stream.flush()
    except (OSError, ValueError, AttributeError):
        # stderr gone (multilog died, closed by --detach): logging must
        # never take a session down.
        pass


_stderr_sink = write_stderr
