"""qmail-style flat configuration files (reference §5).

Search path
    ``DEFAULT_DIRS`` is computed each time it is read (and each time a
    ``Config`` is built without ``dirs``)::

        [$QPSMTPD_CONFIG (if set and not empty),
         os.path.abspath("config")            # ./config of the working directory,
         ($QMAIL or "/var/qmail") + "/control"]

    Each file name is looked up on its own: the first directory holding it
    wins, else the last directory (qmail's control) is used even though the
    file is absent there. The choice is memoised per name until
    ``clear_cache()`` (the daemon calls it on HUP), so a file that later
    appears in an earlier directory is noticed only then.

File format
    UTF-8 (undecodable bytes kept via ``surrogateescape``), split on ``\\n``.
    Blank and whitespace-only lines and lines whose first non-blank
    character is ``#`` are dropped; a ``#`` later in a line is data. Kept
    lines are trimmed. ``$include <path>`` is replaced by the lines of
    ``<path>``: a relative path is looked up like any config name, an
    absolute one is used as is, a directory includes each regular file in
    it whose name does not start with ``.``, sorted by name. Includes nest;
    a cycle logs ``Circular $include reference in config <name>:`` with the
    chain (LOGERROR) and the whole lookup returns nothing.

Caching
    Every file, included file and included directory is remembered with its
    ``(mtime_ns, size, inode, device, mode)``. A lookup stats those paths and
    re-reads only when one changed, so an edit takes effect without a
    restart and an unchanged file costs one ``stat()``. (The mode is part of
    the key so that fixing the permissions of an unreadable file is noticed
    without touching its contents.)

    ``recheck`` (seconds, default 0) spaces those ``stat()`` calls out: a
    name checked less than ``recheck`` seconds ago is answered from the
    cache. The forkserver sets it to one second in its workers (a session
    looks up some forty names, each of them again in the next session), so
    an edit takes effect there within a second; everywhere else at the
    next lookup.

    ``preload()`` fills the cache at once: every file of the search path
    (up to ``PRELOAD_SIZE_LIMIT`` bytes; ``.cdb`` maps excluded) and the
    core files of the table below, absent ones remembered as absent, and
    the host name when ``config/me`` is missing. A daemon calls it before
    it forks, so its workers inherit the cache and a lookup costs them a
    ``stat()`` instead of a search, a read and a parse per connection.

Errors
    A missing file is simply absent (LOGDEBUG). A file that cannot be read
    (permission denied, a directory where a file is expected, ...) gets one
    LOGERROR line ``config: cannot read <path>: <reason>`` per change of the
    file and is treated as absent; nothing raises out of a lookup.

Lookup pipeline (``get_list`` and everything built on it)
    1. ``hook(name)`` if the engine set ``Config.hook``: a list (even empty)
       wins over the files; ``None`` falls through; an exception is logged
       (LOGERROR) and ignored. Not consulted for ``logging``, ``loglevel``,
       ``plugin_dirs`` and ``plugins``, which qpsmtpd reads before any
       ``config`` plugin can answer, nor for ``.cdb`` maps.
    2. The files.
    3. Built-in defaults, scalar lookups only: ``me`` = the host name
       (``socket.getfqdn()``, else ``socket.gethostname()``), ``timeout`` =
       ``1200``. Other defaults belong to the caller.

Core files and their accessors
    ==========================  ===================================  ======================
    file                        accessor                             default
    ==========================  ===================================  ======================
    me                          ``me()``                             host name
    me-auth-results             ``get("me-auth-results")``           caller uses ``me``
    rcpthosts                   ``get_list("rcpthosts")``            none
    morercpthosts.cdb           ``get_map("morercpthosts")``         ``{}``
    relayclients                ``get_list("relayclients")``         none
    morerelayclients.cdb        ``get_map("morerelayclients")``      ``{}``
    databytes                   ``databytes()``                      0 (unlimited)
    timeoutsmtpd, timeout       ``command_timeout()``                1200
    timeout                     ``data_timeout()``                   1200
    spool_dir, spool_perms      ``spool_dir()``                      ``~/tmp/``, ``0700``
    size_threshold              ``size_threshold()``                 0
    smtpgreeting                ``smtpgreeting()``                   None (built-in text)
    loglevel                    ``loglevel()``                       4
    plugins                     ``get_list("plugins")``              none
    plugin_dirs                 ``get_list("plugin_dirs")``          caller: ``./plugins``
    ==========================  ===================================  ======================

Numbers: ``get_int`` accepts an optional sign and ASCII digits; anything
else logs LOGWARN naming the file and the value, and the default is used.
The helpers for sizes and timeouts also refuse negative numbers that way.

Logging: ``log(level, message)`` with qpsmtpd's levels (7 debug ... 3
error). Messages logged while the log callable is running (it may itself
ask for ``loglevel``) are dropped, so logging can never recurse.
"""

from __future__ import annotations

import os
import re
import socket
import stat
import time
from collections.abc import Callable

from .constants import LOGDEBUG, LOGERROR, LOGWARN

__all__ = ["Config", "default_dirs", "DEFAULT_DIRS", "BUILTIN_DEFAULT_TIMEOUT",
           "NO_HOOK_NAMES", "CORE_NAMES"]

DEFAULT_QMAIL = "/var/qmail"
BUILTIN_DEFAULT_TIMEOUT = 1200
DEFAULT_LOGLEVEL = 4
DEFAULT_SPOOL_DIR = "~/tmp/"
DEFAULT_SPOOL_PERMS = 0o700

# Read before plugins are loaded, so the config hook is never asked.
NO_HOOK_NAMES = frozenset({"logging", "loglevel", "plugin_dirs", "plugins"})

# Files the engine reads for every session, present or not: preload()
# caches them (an absent file is cached as absent).
CORE_NAMES = ("me", "me-auth-results", "rcpthosts", "relayclients", "databytes",
              "timeoutsmtpd", "timeout", "spool_dir", "spool_perms", "size_threshold",
              "smtpgreeting", "loglevel", "plugins", "logging", "plugin_dirs",
              "max_recipients", "enhancedstatuscodes", "max_line_length",
              "max_data_line_length", "max_header_size", "max_helo_length",
              "max_path_length", "max_transactions", "max_errors", "max_session_time",
              "hook_timeout", "dns_servers", "dns_timeout", "dns_tries", "store")
PRELOAD_SIZE_LIMIT = 1 << 20   # larger files are read when first asked for

_BLANKS = " \t\n\r\f\v"   # Perl's \s, not str.strip()'s Unicode whitespace
_INCLUDE = re.compile(r"\$include\s+(\S+)", re.ASCII)
_INTEGER = re.compile(r"[+-]?[0-9]+")
_DIGITS = re.compile(r"[0-9]+")
_OCTAL_MODE = re.compile(r"0?[0-7]{1,4}")
_TRUE = frozenset({"1", "yes", "true", "on"})
_FALSE = frozenset({"0", "no", "false", "off", ""})
_HOOK_SOURCE = "the config hook"
_DEFAULT_SOURCE = "the built-in default"


def default_dirs() -> list[str]:
    """The search path from the environment and working directory, as of now."""
    dirs = []
    override = os.environ.get("QPSMTPD_CONFIG")
    if override:
        dirs.append(os.path.abspath(override))
    dirs.append(os.path.abspath("config"))
    dirs.append(os.path.join(os.environ.get("QMAIL") or DEFAULT_QMAIL, "control"))
    return dirs


def __getattr__(name):
    # DEFAULT_DIRS depends on the environment and cwd at the time of use.
    if name == "DEFAULT_DIRS":
        return default_dirs()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _IncludeCycle(Exception):
    def __init__(self, chain: list[str]):
        super().__init__(chain)
        self.chain = chain


def _stat_key(path: str):
    """What identifies one version of ``path``: None when it does not exist."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    except OSError as exc:
        return ("error", exc.errno)
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev, st.st_mode)


def _is_directory(key) -> bool:
    return key is not None and key[0] != "error" and stat.S_ISDIR(key[4])


def _parse(raw: bytes) -> tuple[str, ...]:
    lines = []
    for line in raw.decode("utf-8", "surrogateescape").split("\n"):
        line = line.strip(_BLANKS)
        if line and not line.startswith("#"):
            lines.append(line)
    return tuple(lines)


class Config:
    """qmail-style flat configuration files.

    ``dirs`` is the search path (default: ``default_dirs()`` at construction;
    relative entries are made absolute now, so a later ``chdir`` does not
    move them). ``log`` is ``log(level, message)`` or None for silence.
    ``hook`` is set by the engine: ``hook(name) -> list[str] | None``.
    """

    hook: Callable[[str], list[str] | None] | None

    def __init__(self, dirs: list[str] | None = None, log=None):
        dirs = default_dirs() if dirs is None else [os.path.abspath(d) for d in dirs]
        if not dirs:
            raise ValueError("Config needs at least one directory")
        self.dirs = dirs
        self.hook = None
        self._log_callable = log
        self._logging = False
        self._paths: dict[str, str] = {}
        # path -> (stat key, lines or None when unreadable)
        self._files: dict[str, tuple[object, tuple[str, ...] | None]] = {}
        # name -> (((path, stat key), ...), expanded lines)
        self._lists: dict[str, tuple[tuple, tuple[str, ...]]] = {}
        # path -> (stat key, map)
        self._maps: dict[str, tuple[object, dict[str, str]]] = {}
        self._spool_dir: str | None = None
        self._hostname: str | None = None
        self.recheck = 0.0
        self._checked: dict[str, float] = {}     # name -> when its files were stat()ed

    # -- lookup ----------------------------------------------------------------

    def path(self, name: str) -> str:
        """Where ``name`` is read from: the first directory that has it, else the last."""
        found = self._paths.get(name)
        if found is None:
            for directory in self.dirs:
                candidate = os.path.join(directory, name)
                if os.path.exists(candidate):
                    found = candidate
                    break
            else:
                found = os.path.join(self.dirs[-1], name)
            self._paths[name] = found
        return found

    def get_list(self, name: str) -> list[str]:
        """Every kept line of ``name`` (hook first, then the files); [] when absent."""
        return list(self._lookup(name)[0])

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first line of ``name``, else its built-in default, else ``default``."""
        value, _source = self._first(name)
        return default if value is None else value

    def get_int(self, name: str, default: int) -> int:
        """The first line as an int; ``default`` when absent or not a number (LOGWARN)."""
        return self._integer(name, default, negative_ok=True)

    def get_bool(self, name: str, default: bool = False) -> bool:
        """1/yes/true/on or 0/no/false/off/'' (any case); else ``default`` (LOGWARN if set)."""
        value, source = self._first(name)
        if value is None:
            return default
        word = value.strip(_BLANKS).lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        self._log(LOGWARN, f"config: {name}: ignoring value {value!r} from "
                           f"{source}, expected yes/no, true/false, on/off or 1/0")
        return default

    def get_map(self, name: str) -> dict[str, str]:
        """``<name>.cdb`` as a dict (latin-1 keys and values); {} when missing or unreadable."""
        path = self.path(name + ".cdb")
        key = _stat_key(path)
        cached = self._maps.get(path)
        if cached is not None and cached[0] == key:
            return dict(cached[1])
        mapping: dict[str, str] = {}
        problem = None
        if key is None:
            pass
        elif key[0] == "error":
            problem = os.strerror(key[1])
        else:
            # Imported with the first map: most sessions read none.
            from .cdb import CDBError, read_cdb
            try:
                raw = read_cdb(path)
            except OSError as exc:
                problem = exc.strerror or str(exc)
            except CDBError as exc:
                problem = str(exc)
            else:
                mapping = {k.decode("latin-1"): v.decode("latin-1") for k, v in raw.items()}
        self._maps[path] = (key, mapping)
        if problem is not None:
            self._log(LOGERROR, f"config: cannot read {path}: {problem}")
        elif key is None:
            self._log(LOGDEBUG, f"config: {path} absent")
        return dict(mapping)

    def mtime_key(self, name: str) -> tuple:
        """A value that changes whenever ``name`` (or a file it includes) changes.

        Covers files only, not answers of the config hook. For a map pass the
        file name: ``mtime_key("morercpthosts.cdb")``.
        """
        if name.endswith(".cdb"):
            path = self.path(name)
            return ((path, _stat_key(path)),)
        self._from_files(name)
        return self._lists[name][0]

    def preload(self, names=()) -> None:
        """Cache every file of the search path, ``CORE_NAMES`` and ``names``.

        Files larger than ``PRELOAD_SIZE_LIMIT``, ``.cdb`` maps and names
        starting with ``.`` are left for their first lookup. The config hook
        is not asked. Call it in a daemon's parent before forking.
        """
        wanted = set(CORE_NAMES)
        wanted.update(names)
        for directory in self.dirs:
            try:
                with os.scandir(directory) as entries:
                    for entry in entries:
                        name = entry.name
                        if name.startswith(".") or name.endswith(".cdb"):
                            continue
                        try:
                            if not entry.is_file() or \
                                    entry.stat().st_size > PRELOAD_SIZE_LIMIT:
                                continue
                        except OSError:
                            continue
                        wanted.add(name)
            except OSError:
                continue
        for name in sorted(wanted):
            self._from_files(name)
        if not self._from_files("me"):
            self._system_hostname()

    def clear_cache(self) -> None:
        """Forget directory choices, file contents, spool_dir and the host name."""
        self._paths.clear()
        self._files.clear()
        self._lists.clear()
        self._checked.clear()
        self._maps.clear()
        self._spool_dir = None
        self._hostname = None

    # -- core files ------------------------------------------------------------

    def me(self) -> str:
        """This host's name: ``config/me`` or the system host name."""
        return self.get("me")

    def databytes(self) -> int:
        """Maximum message size in bytes; 0 means unlimited."""
        return self._integer("databytes", 0)

    def command_timeout(self) -> int:
        """Seconds to wait for a command: ``timeoutsmtpd``, else ``timeout``, else 1200."""
        return (self._integer("timeoutsmtpd", 0) or self._integer("timeout", 0)
                or BUILTIN_DEFAULT_TIMEOUT)

    def data_timeout(self) -> int:
        """Seconds to wait for each DATA line: ``timeout``, else 1200."""
        return self._integer("timeout", 0) or BUILTIN_DEFAULT_TIMEOUT

    def loglevel(self) -> int:
        """The master log level: the first line if it is all digits, else 4."""
        # No warning for garbage: the logger itself calls this.
        lines = self._lookup("loglevel")[0]
        if lines and _DIGITS.fullmatch(lines[0]):
            return int(lines[0])
        return DEFAULT_LOGLEVEL

    def size_threshold(self) -> int:
        """Bytes of a message body kept in memory before spooling; default 0."""
        return self._integer("size_threshold", 0)

    def smtpgreeting(self) -> str | None:
        """The configured greeting text (first line), or None for the built-in one."""
        return self.get("smtpgreeting")

    def spool_dir(self) -> str:
        """The spool directory, with a trailing ``/``; created if missing.

        ``config/spool_dir`` (``~`` expanded from ``$HOME``), default
        ``~/tmp/``. A missing directory is created with ``spool_perms``
        (octal, default 0700; the mode is set exactly, regardless of the
        umask). An existing one with another mode gets the LOGWARN
        ``Permissions on spool_dir <dir> are not <mode>`` and is left alone.
        Cached until ``clear_cache()``. Raises ``OSError`` when the directory
        cannot be created.
        """
        if self._spool_dir is not None:
            return self._spool_dir
        self._log(LOGDEBUG, "Initializing spool_dir")
        directory = os.path.expanduser(self.get("spool_dir") or DEFAULT_SPOOL_DIR)
        if not directory.endswith("/"):
            directory += "/"
        mode = self._spool_perms()
        if not os.path.isdir(directory):
            try:
                os.mkdir(directory, mode)
                os.chmod(directory, mode)
            except OSError as exc:
                message = f"Could not create spool_dir {directory}: {exc.strerror or exc}"
                self._log(LOGERROR, message)
                raise OSError(exc.errno, message) from exc
        if stat.S_IMODE(os.stat(directory).st_mode) != mode:
            self._log(LOGWARN, f"Permissions on spool_dir {directory} are not {mode:04o}")
        self._spool_dir = directory
        return directory

    # -- internals -------------------------------------------------------------

    def _log(self, level: int, message: str) -> None:
        if self._log_callable is None or self._logging:
            return
        self._logging = True
        try:
            self._log_callable(level, message)
        finally:
            self._logging = False

    def _lookup(self, name: str) -> tuple[tuple[str, ...], str]:
        """(lines, where they came from) after the hook and the files."""
        if self.hook is not None and name not in NO_HOOK_NAMES:
            try:
                answer = self.hook(name)
            except Exception as exc:
                self._log(LOGERROR, f"config: config hook failed for {name}, "
                                    f"ignored: {type(exc).__name__}: {exc}")
                answer = None
            if isinstance(answer, (list, tuple)):
                return tuple(str(v) for v in answer if v is not None), _HOOK_SOURCE
            if answer is not None:
                self._log(LOGERROR, f"config: config hook returned "
                                    f"{type(answer).__name__} for {name}, ignored")
        return self._from_files(name), self.path(name)

    def _first(self, name: str) -> tuple[str | None, str]:
        lines, source = self._lookup(name)
        if lines:
            return lines[0], source
        if name == "me":
            return self._system_hostname(), _DEFAULT_SOURCE
        if name == "timeout":
            return str(BUILTIN_DEFAULT_TIMEOUT), _DEFAULT_SOURCE
        return None, source

    def _integer(self, name: str, default: int, negative_ok: bool = False) -> int:
        value, source = self._first(name)
        if value is None:
            return default
        if _INTEGER.fullmatch(value):
            number = int(value)
            if negative_ok or number >= 0:
                return number
        self._log(LOGWARN, f"config: {name}: ignoring invalid number {value!r} "
                           f"from {source}, using {default}")
        return default

    def _spool_perms(self) -> int:
        value, source = self._first("spool_perms")
        if value is None:
            return DEFAULT_SPOOL_PERMS
        if _OCTAL_MODE.fullmatch(value):
            return int(value, 8)
        self._log(LOGWARN, f"config: spool_perms: ignoring invalid octal mode "
                           f"{value!r} from {source}, using {DEFAULT_SPOOL_PERMS:04o}")
        return DEFAULT_SPOOL_PERMS

    def _system_hostname(self) -> str:
        if self._hostname is None:
            self._hostname = socket.getfqdn() or socket.gethostname()
        return self._hostname

    def _from_files(self, name: str) -> tuple[str, ...]:
        cached = self._lists.get(name)
        if cached is not None:
            dependencies, lines = cached
            recheck = self.recheck
            if recheck:
                now = time.monotonic()
                if now - self._checked.get(name, -recheck) < recheck:
                    return lines
                self._checked[name] = now
            for path, key in dependencies:
                if _stat_key(path) != key:
                    break
            else:
                return lines
        dependencies = []
        top = self.path(name)
        cycle = None
        try:
            lines = self._expand(top, [], dependencies, directory_ok=False)
        except _IncludeCycle as exc:
            cycle = exc.chain
            lines = ()
        # Store before logging: the log callable may look up config itself.
        self._lists[name] = (tuple(dependencies), lines)
        if self.recheck:
            self._checked[name] = time.monotonic()
        if cycle:
            self._log(LOGERROR, f"Circular $include reference in config {name}:")
            self._log(LOGERROR, f"From {cycle[0]}:")
            for path in cycle[1:]:
                self._log(LOGERROR, f"  includes {path}")
        return lines

    def _expand(self, path: str, chain: list[tuple[str, str]], dependencies: list,
                directory_ok: bool) -> tuple[str, ...]:
        """The lines of ``path`` with includes resolved; ``chain`` = (realpath, path) above it."""
        # realpath() costs a system call per path component: it is only
        # needed where a cycle is possible, inside an include.
        real = None
        if chain:
            real = os.path.realpath(path)
            if any(seen == real for seen, _ in chain):
                raise _IncludeCycle([shown for _, shown in chain] + [path])
        key = _stat_key(path)
        dependencies.append((path, key))
        if directory_ok and _is_directory(key):
            lines: list[str] = []
            inner = chain + [(real, path)]
            for entry in self._directory_entries(path, chain[-1][1]):
                lines.extend(self._expand(entry, inner, dependencies, directory_ok=False))
            return tuple(lines)
        file_lines = self._read(path, key)
        if not file_lines:
            return ()
        lines = []
        inner = None
        for line in file_lines:
            match = _INCLUDE.fullmatch(line) if line.startswith("$include") else None
            if match is None:
                lines.append(line)
                continue
            if inner is None:
                inner = chain + [(real or os.path.realpath(path), path)]
            target = match.group(1)
            if not os.path.isabs(target):
                target = self.path(target)
            lines.extend(self._expand(target, inner, dependencies, directory_ok=True))
        return tuple(lines)

    def _directory_entries(self, directory: str, included_from: str) -> list[str]:
        try:
            with os.scandir(directory) as entries:
                names = sorted(entry.name for entry in entries
                               if not entry.name.startswith(".") and entry.is_file())
        except OSError as exc:
            self._log(LOGERROR, f"config: cannot read directory {directory} "
                                f"(included from {included_from}): "
                                f"{exc.strerror or exc}")
            return []
        return [os.path.join(directory, name) for name in names]

    def _read(self, path: str, key) -> tuple[str, ...] | None:
        """The filtered lines of one file (includes not expanded); None if unreadable."""
        if key is None:
            self._log(LOGDEBUG, f"config: {path} absent")
            return ()
        cached = self._files.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        problem = None
        lines: tuple[str, ...] | None = None
        if key[0] == "error":
            problem = os.strerror(key[1])
        else:
            try:
                with open(path, "rb") as fh:
                    raw = fh.read()
            except OSError as exc:
                problem = exc.strerror or str(exc)
            else:
                lines = _parse(raw)
        self._files[path] = (key, lines)
        if problem is not None:
            self._log(LOGERROR, f"config: cannot read {path}: {problem}")
        else:
            self._log(LOGDEBUG, f"config: read {len(lines)} lines from {path}")
        return lines
