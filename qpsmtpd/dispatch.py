"""Loading plugins and running hooks.

``Dispatcher.load(lines)`` turns ``config/plugins`` lines into plugin
instances (§5.6 of the reference): ``name [args...]``, where ``dir/name``
is the file ``<plugin_dir>/dir/name.py`` (``-`` in the file name becomes
``_``), ``name:N`` loads the same file as another instance, and a dotted
name (``package.module``) imports a Python module from the library path.

``run_hooks(session, hook, *args)`` is qpsmtpd's ``run_hooks`` (§1.3):
callbacks run in registration order; the first result other than
``DECLINED`` wins; after each callback the ``deny`` hook (for the four
rejecting codes) or the ``ok`` hook (for everything else) sees the
verdict. It returns a ``HookResult``. Differences from the original, on
purpose:

* a plugin that raises is logged (``FATAL PLUGIN ERROR [name]: ...`` and
  its traceback) and the result is ``DENYSOFT`` with ``crashed`` set, so
  the client gets a temporary failure — never a silent accept. For hooks
  that send no reply (``disconnect``, ``reset_transaction``, ...) the
  remaining plugins still run;
* a value that is not exactly one of the codes (``123456``, a string,
  ``True``) is a broken plugin too: it is logged (``Plugin <name>, hook
  <hook> returned <value>``) and handled like a crash, ``DENYSOFT`` with
  ``crashed`` set. ``None`` (and ``(None, ...)``, logged as ``undef``)
  still means ``DECLINED``;
* each callback has a deadline, ``config/hook_timeout`` seconds (default
  300, 0: none), when the session sets ``hook_timeout`` (``SMTP`` does;
  ``pre-connection`` in the forkserver's parent has none). See
  ``HookWatchdog``.
"""

import collections
import importlib
import importlib.util
import os
import sys
import threading
import time

from .constants import (
    DECLINED, DENYSOFT, HOOKS, LOGCRIT, LOGDEBUG, LOGERROR, LOGINFO, Code,
    hook_method_name)
from .log import write_stderr
from .plugin import Plugin, PluginError, plugin_name, set_current_hook

INTERNAL_ERROR = "Internal error - try again later"

# Hooks whose result sends nothing to the client: a crash in one plugin
# must not keep the others from cleaning up.
_CONTINUE_AFTER_CRASH = frozenset((
    "pre-connection", "reset_transaction", "disconnect", "post-connection",
    "data_headers_end", "data_post_headers", "received_line", "queue_post",
    "logging", "config", "user_config", "deny", "ok"))

# Parse hooks return (code, callable); the callable must survive.
_PARSE_HOOKS = frozenset(("mail_parse", "rcpt_parse", "auth_parse",
                          "helo_parse", "ehlo_parse"))


# A plain namedtuple, not typing.NamedTuple: ``typing`` costs the
# per-connection program a few milliseconds of start-up.
HookResult = collections.namedtuple(
    "HookResult", ("code", "messages", "plugin", "crashed", "values"),
    defaults=((), None, False, ()))
HookResult.__doc__ = """What ``run_hooks`` decided.

``code`` is a ``Code`` (``DECLINED`` when nobody decided); ``messages``
the reply lines the deciding plugin gave (may be empty); ``plugin`` its
name; ``crashed`` is True when a plugin raised; ``values`` the raw
extra values (parse hooks return a callable there).
"""

DECLINED_RESULT = HookResult(DECLINED)

DEFAULT_HOOK_TIMEOUT = 300


class _Ticket:
    """One callback being watched."""

    __slots__ = ("deadline", "session", "plugin", "hook", "timeout", "fired")

    def __init__(self, deadline, session, plugin, hook, timeout):
        self.deadline = deadline
        self.session = session
        self.plugin = plugin
        self.hook = hook
        self.timeout = timeout
        self.fired = False


class HookWatchdog:
    """Deadlines for hook callbacks, enforced without interrupting them.

    The callback runs in the session's own thread, as it always does; before
    it starts ``arm`` puts a ticket (its deadline) in a dict keyed by the
    thread, afterwards ``disarm`` takes it out again: no thread switch and
    no system call per callback. One watchdog thread per process (started
    at the first ``arm``, again in a forked child) looks at the tickets
    every ``interval`` seconds (at most 1, at most a quarter of the
    shortest timeout seen). For a ticket past its deadline it calls
    ``session.hook_deadline_passed(plugin_name, hook, timeout)``, once.
    ``SMTP`` answers ``451``, drops the spooled message, shuts the socket
    down and, when the session owns the process (forkserver worker,
    per-connection program), ends the process; a session running in a
    thread of a bigger program is abandoned instead, and its thread stays
    blocked until the callback returns (Python cannot stop a thread).

    Nothing is raised inside the plugin. A nested ``run_hooks`` (a hook that
    runs another hook) is covered by the outer callback's deadline.
    """

    def __init__(self):
        self.armed = {}
        self.interval = 1.0
        self._running = False
        self._lock = threading.Lock()

    def arm(self, session, plugin_name, hook, timeout):
        """Start the clock for one callback; None when the thread is
        already being watched (nested hook)."""
        ident = threading.get_ident()
        if ident in self.armed:
            return None
        if not self._running:
            self._start()
        if timeout < self.interval * 4:
            self.interval = max(0.02, timeout / 4)
        ticket = _Ticket(time.monotonic() + timeout, session, plugin_name, hook, timeout)
        self.armed[ident] = ticket
        return ticket

    def disarm(self):
        self.armed.pop(threading.get_ident(), None)

    def start(self):
        """Start the watchdog thread now rather than at the first ``arm``
        (a forkserver spare does, before it takes its first client)."""
        if not self._running:
            self._start()

    def _start(self):
        with self._lock:
            if self._running:
                return
            thread = threading.Thread(target=self._watch, name="hook-watchdog",
                                      daemon=True)
            thread.start()
            self._running = True

    def _after_fork(self):
        # Only the forking thread survives a fork: the child needs its own.
        self._running = False
        self._lock = threading.Lock()
        self.armed = {}

    def _watch(self):
        while True:
            time.sleep(self.interval)
            now = time.monotonic()
            for ticket in list(self.armed.values()):
                if ticket.fired or ticket.deadline > now:
                    continue
                ticket.fired = True
                handler = getattr(ticket.session, "hook_deadline_passed", None)
                if handler is None:
                    continue
                try:
                    handler(ticket.plugin, ticket.hook, ticket.timeout)
                except BaseException as exc:   # the watchdog must survive
                    write_stderr(f"{os.getpid()} hook watchdog failed: {exc!r}")


WATCHDOG = HookWatchdog()
os.register_at_fork(after_in_child=WATCHDOG._after_fork)


class Dispatcher:
    """The hook table of one process, built from ``config/plugins``."""

    def __init__(self, app, plugin_dirs=None):
        self.app = app
        self.plugin_dirs = list(plugin_dirs or [])
        self.hooks = {hook: [] for hook in HOOKS}
        self.plugins = []
        self._modules = {}

    # -- loading ------------------------------------------------------------

    def load(self, lines):
        """Instantiate and register one plugin per line; raises PluginError."""
        for line in lines:
            if not all(" " <= ch <= "~" for ch in line):
                raise PluginError(f"unsafe characters in config line: {line!r}")
            words = line.split()
            if words:
                self.add(self.instantiate(words[0], words[1:]))

    def instantiate(self, config_name, args):
        """Create the plugin object for one ``config/plugins`` line."""
        cls = self.plugin_class(config_name.split(":", 1)[0]
                                if _has_instance_suffix(config_name)
                                else config_name)
        plugin = cls(self.app, config_name, args)
        set_current_hook(None)
        try:
            usable = plugin.register(*args)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(
                f"plugin {config_name} failed to register: {exc!r}\n"
                + _format_exc()) from exc
        if usable is False:
            self.app.log(LOGINFO, "plugin disabled itself, no hooks registered",
                         plugin=plugin.name)
            plugin._disabled = True
        return plugin

    def add(self, plugin):
        """Register an instantiated plugin's hooks (auto ``hook_*`` first)."""
        self.plugins.append(plugin)
        if getattr(plugin, "_disabled", False):
            return
        for hook, method_name in _HOOK_METHOD_NAMES:
            method = getattr(plugin, method_name, None)
            if method is not None and callable(method):
                self._register(plugin, hook, method, False)
        for hook, method, unshift in plugin._extra_hooks:
            self._register(plugin, hook, method, unshift)

    def _register(self, plugin, hook, method, unshift):
        if self.app.log.enabled(LOGDEBUG):
            self.app.log(LOGDEBUG, f"{plugin.name} hooking {hook}")
        entry = (plugin, method)
        if unshift:
            self.hooks[hook].insert(0, entry)
        else:
            self.hooks[hook].append(entry)

    def plugin_class(self, name):
        """Find and import the plugin file for ``name``; return its class."""
        if "." in name and "/" not in name:
            module = importlib.import_module(name)
            return _plugin_class_of(module, name)
        path = self.find_plugin(name)
        module = self._modules.get(path)
        if module is None:
            module = _import_file(path, plugin_name(name))
            self._modules[path] = module
        return _plugin_class_of(module, name)

    def find_plugin(self, name):
        """Path of the plugin file for ``name`` in the plugin directories."""
        candidates = [name.replace("-", "_") + ".py", name + ".py"]
        for directory in self.plugin_dirs:
            for candidate in candidates:
                path = os.path.join(directory, candidate)
                if os.path.isfile(path):
                    return os.path.abspath(path)
        raise PluginError(f"Plugin {name} not found in our plugin dirs "
                          f"({', '.join(self.plugin_dirs)})")

    # -- running --------------------------------------------------------------

    def has_hook(self, hook):
        return bool(self.hooks.get(hook))

    def offers_auth(self):
        """True when a plugin answers an ``auth`` hook, i.e. the engine
        offers AUTH (without importing ``qpsmtpd.auth``)."""
        hooks = self.hooks
        return any(hooks[hook] for hook in AUTH_HOOKS)

    def run_hooks(self, session, hook, *args):
        """Run ``hook``'s callbacks; return the deciding ``HookResult``."""
        callbacks = self.hooks[hook]
        if not callbacks:
            return DECLINED_RESULT
        log = self.app.log
        trace = log.enabled(LOGDEBUG)
        notify = hook not in ("deny", "ok") and (
            self.hooks["deny"] or self.hooks["ok"])
        crashed = False
        last_declined = ((), None, ())
        timeout = getattr(session, "hook_timeout", 0)
        watchdog = WATCHDOG if timeout else None
        previous_hook = set_current_hook(hook)
        try:
            for plugin, method in callbacks:
                if trace:
                    log(LOGDEBUG, plugin.name, hook=hook, plugin="running plugin")
                ticket = watchdog and watchdog.arm(session, plugin.name, hook, timeout)
                try:
                    raw = method(session, *args)
                except Exception as exc:
                    crashed = True
                    self._log_crash(plugin, hook, exc)
                    if hook in _CONTINUE_AFTER_CRASH and not (ticket and ticket.fired):
                        continue
                    return HookResult(DENYSOFT, (INTERNAL_ERROR,), plugin.name, True)
                finally:
                    if ticket:
                        watchdog.disarm()
                if ticket and ticket.fired:
                    # Too late: the session has been answered and ended.
                    return HookResult(DENYSOFT, (INTERNAL_ERROR,), plugin.name, True)
                code, messages, values = self._normalise(plugin, hook, raw)
                if code is None:
                    crashed = True
                    if hook in _CONTINUE_AFTER_CRASH:
                        continue
                    return HookResult(DENYSOFT, (INTERNAL_ERROR,), plugin.name, True)
                if trace:
                    log(LOGDEBUG, f"Plugin {plugin.name}, hook {hook} returned "
                        f"{code.name}, {messages[0] if messages else ''}")
                if notify:
                    follow = "deny" if code.is_deny else "ok"
                    if self.hooks[follow]:
                        self.run_no_respond(session, follow, plugin.name, code,
                                            messages[0] if messages else "")
                if code != DECLINED:
                    return HookResult(code, messages, plugin.name, crashed, values)
                if messages or values:
                    last_declined = (messages, plugin.name, values)
        finally:
            set_current_hook(previous_hook)
        # qpsmtpd keeps the last DECLINED's message: "451 <why queuing failed>"
        messages, name, values = last_declined
        return HookResult(DECLINED, messages, name, crashed, values)

    def run_no_respond(self, session, hook, *args):
        """qpsmtpd's ``run_hooks_no_respond``: no tracing, no deny/ok hooks.

        Returns ``(code, values)``; ``(DECLINED, ())`` when nobody decided.
        """
        previous_hook = set_current_hook(hook)
        try:
            for plugin, method in self.hooks[hook]:
                try:
                    raw = method(session, *args)
                except Exception as exc:
                    if hook == "logging":
                        write_stderr(f"{os.getpid()} FATAL PLUGIN ERROR "
                                     f"[{plugin.name}]: {exc!r}")
                    else:
                        self._log_crash(plugin, hook, exc)
                    continue
                if raw is None:
                    continue
                if isinstance(raw, (tuple, list)):
                    code, values = (raw[0] if raw else None), tuple(raw[1:])
                else:
                    code, values = raw, ()
                if code is None:
                    continue
                if isinstance(code, (list, dict, set)) or code not in _VALID_CODES:
                    continue
                if code != DECLINED:
                    return Code(code), values
        finally:
            set_current_hook(previous_hook)
        return DECLINED, ()

    def run_logging(self, level, hook, plugin, message):
        """The ``logging`` hook; never raises, never recurses."""
        self.run_no_respond(self.app.log.current_session(), "logging",
                            level, hook, plugin, message)

    def run_config(self, name):
        """The ``config`` hook: a list of values, or None to fall through."""
        if not self.hooks["config"]:
            return None
        code, values = self.run_no_respond(None, "config", name)
        if code == Code.OK:
            if len(values) == 1 and isinstance(values[0], (list, tuple)):
                return list(values[0])
            return [v for v in values]
        return None

    def hook_order(self):
        """Text listing every hook with its plugins, in the order they run."""
        lines = []
        for hook in HOOKS:
            names = [plugin.name for plugin, _ in self.hooks[hook]]
            if names:
                lines.append(f"{hook}: {', '.join(names)}")
        return "\n".join(lines)

    def _normalise(self, plugin, hook, raw):
        if raw is None:
            return DECLINED, (), ()
        if isinstance(raw, (tuple, list)):
            code = raw[0] if raw else None
            rest = tuple(raw[1:])
        else:
            code, rest = raw, ()
        if code is None:
            self.app.log(LOGERROR, f"Plugin {plugin.name}, hook {hook} returned undef!")
            return DECLINED, (), ()
        try:
            valid = code in _VALID_CODES and not isinstance(code, bool)
        except TypeError:   # unhashable
            valid = False
        if not valid:
            # A broken plugin: like a crash, never a silent pass.
            self.app.log(LOGERROR, f"Plugin {plugin.name}, hook {hook} returned {code!r}")
            return None, (), ()
        if hook in _PARSE_HOOKS:
            return Code(code), (), rest
        messages = []
        for value in rest:
            if value is None:
                continue
            messages.extend(str(value).split("\n"))
        return Code(code), tuple(messages), rest

    def _log_crash(self, plugin, hook, exc):
        log = self.app.log
        log(LOGCRIT, f"FATAL PLUGIN ERROR [{plugin.name}]: {exc!r}", hook=hook)
        for line in _format_exc().rstrip().splitlines():
            log(LOGCRIT, line, hook=hook, plugin=plugin.name)


_VALID_CODES = frozenset(int(c) for c in Code)

# (hook, "hook_<name>") for every hook, worked out once, not per plugin.
_HOOK_METHOD_NAMES = tuple((hook, hook_method_name(hook)) for hook in HOOKS)

# The hooks that make the engine offer AUTH (see ``qpsmtpd.auth.mechanisms``).
AUTH_HOOKS = tuple(hook for hook in HOOKS if hook == "auth" or hook.startswith("auth-"))


def _format_exc():
    # traceback (with linecache, tokenize, textwrap) is only needed when
    # something went wrong: not imported at start-up.
    import traceback
    return traceback.format_exc()


def _has_instance_suffix(config_name):
    name, sep, number = config_name.rpartition(":")
    return bool(sep and name and number.isdigit())


def _import_file(path, escaped_name):
    module_name = "qpsmtpd_plugins." + escaped_name.replace("::", ".")
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise PluginError(f"cannot load plugin file {path}: {exc!r}\n"
                          + _format_exc()) from exc
    return module


def _plugin_class_of(module, name):
    explicit = getattr(module, "plugin_class", None)
    if explicit is not None:
        return explicit
    found = [obj for obj in vars(module).values()
             if isinstance(obj, type) and issubclass(obj, Plugin)
             and obj is not Plugin and obj.__module__ == module.__name__]
    if len(found) != 1:
        raise PluginError(
            f"plugin {name}: the file must define exactly one Plugin subclass "
            f"(found {len(found)}); set plugin_class to choose")
    return found[0]
