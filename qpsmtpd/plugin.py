"""The ``Plugin`` base class and the helpers every plugin shares.

A plugin is a file under ``plugins/`` that defines one subclass of
``Plugin``; its module docstring is its manual. The loader
(``qpsmtpd.dispatch``) creates one instance per ``config/plugins`` line:

1. ``__init__(app, config_name, args)`` — done by the loader, not overridden;
2. ``register(*args)`` — parse arguments, read static config; the default
   parses ``key value`` pairs into ``self.args``. Returning ``False`` means
   "cannot work here": the plugin is logged and none of its hooks run.
   Raising stops start-up (or a reload) with a clear message;
3. every method named ``hook_<name>`` is registered for that hook (``-`` in
   the hook name becomes ``_``), after any ``register_hook`` calls made in
   ``register``.

A hook method receives the session first, then the hook's own arguments, and
returns a ``Code``, ``(code, message, ...)``, or ``None`` (= ``DECLINED``).
Plugin instances are shared by every connection of a process: keep
per-connection state in ``session.connection.notes`` or
``session.transaction.notes``, never on ``self``.

Shared conventions implemented once here (§9.3–§9.6 of the reference):
``reject``/``reject_type`` via ``get_reject``; ``is_immune``;
``is_naughty``; ``store_deferred_reject``; ``adjust_karma``;
``store_auth_results``; one summary line per decision via ``log_pass``,
``log_fail``, ``log_skip``, ``log_error``; DNS lookups through the shared
resolver with a per-connection cache (``resolve_a`` ..., §9.3).
"""

import ipaddress
import os
import pwd
import threading

from .constants import (
    DECLINED, DENY, DENY_DISCONNECT, DENYSOFT, DENYSOFT_DISCONNECT, HOOKS,
    LOGDEBUG, LOGERROR, LOGINFO, LOGWARN, Level, log_level)

# The hook currently running in this thread; log lines carry its name.
_context = threading.local()


def current_hook():
    return getattr(_context, "hook", None)


def set_current_hook(hook):
    previous = getattr(_context, "hook", None)
    _context.hook = hook
    return previous


def plugin_name(config_name):
    """qpsmtpd's escaped plugin name, as log tools expect it (§5.6).

    ``ident/geoip`` -> ``ident::geoip``, ``queue/qmail-queue`` ->
    ``queue::qmail_2dqueue``, ``relay:0`` -> ``relay_3a0``.
    """
    out = []
    after_slash = False
    for ch in config_name:
        if ch == "/":
            out.append("::")
            after_slash = True
            continue
        if (ch.isascii() and (ch.isalnum() or ch == "_")) and not (
                after_slash and ch.isdigit()):
            out.append(ch)
        else:
            out.append("".join("_%02x" % b for b in ch.encode("utf-8")))
        after_slash = False
    return "".join(out)


class PluginError(Exception):
    """A plugin cannot be loaded or configured; the message says why."""


class Plugin:
    """Base class: see the module docstring for the contract."""

    def __init__(self, app, config_name, args=()):
        self.app = app
        self.config_name = config_name
        self.name = plugin_name(config_name)
        self.raw_args = tuple(args)
        self.args = {}
        self._extra_hooks = []  # (hook, method, unshift) from register_hook
        self._loglevel = None   # (mode, value): ('set', n) or ('shift', n)

    # -- set-up ---------------------------------------------------------

    def register(self, *args):
        """Default: arguments are ``key value`` pairs."""
        self.args = self.parse_args(args)

    def parse_args(self, args, defaults=None):
        """``key value`` pairs -> dict (keys as written), over ``defaults``.

        An odd count raises ``PluginError('Bad arguments ...')``. The
        ``loglevel`` key is taken here (§8.5) and also left in the dict.
        """
        result = dict(defaults or {})
        if len(args) % 2:
            raise PluginError(
                f"Bad arguments for {self.config_name}: expected key value "
                f"pairs, got {' '.join(args)!r}")
        for key, value in zip(args[0::2], args[1::2]):
            result[key] = value
        if "loglevel" in result:
            self.set_loglevel(result["loglevel"])
        return result

    def set_loglevel(self, value):
        """Per-plugin ``loglevel``: a digit fixes the level, ``+N``/``-N`` shifts it."""
        value = str(value)
        if value.isdigit() and len(value) == 1:
            self._loglevel = ("set", int(value))
        elif len(value) == 2 and value[0] in "+-" and value[1].isdigit():
            self._loglevel = ("shift", int(value))
        elif log_level(value) is not None and not value.isdigit():
            self._loglevel = ("set", int(log_level(value)))
        else:
            self._loglevel = None
            self.log(LOGERROR, f"invalid loglevel setting: {value}")

    def level_argument(self, value, default=LOGWARN):
        """A log level argument (digits or a ``LOG*`` name) as an int;
        ``None`` gives ``default``, anything else a warning and ``default``."""
        if value is None:
            return int(default)
        text = str(value).strip()
        if text.isdigit():
            return int(text)
        level = log_level(text)
        if level is None:
            self.log(LOGWARN, f"unknown log level {text!r}, using {log_level(default)}")
            return int(default)
        return int(level)

    def register_hook(self, hook, method, unshift=False):
        """Register ``method`` for ``hook``; ``unshift`` puts it first."""
        if hook not in HOOKS:
            raise PluginError(f"{self.name}: Invalid hook: {hook}")
        self._extra_hooks.append((hook, method, unshift))

    # -- logging --------------------------------------------------------

    def log(self, level, *parts):
        """Log with this plugin's name and the current hook's."""
        level = int(level)
        if self._loglevel is not None:
            mode, value = self._loglevel
            level = value if mode == "set" else min(7, max(0, level + value))
        self.app.log(level, " ".join(str(p) for p in parts),
                     hook=current_hook(), plugin=self.name)

    def log_pass(self, detail=""):
        self.log(LOGINFO, _summary("pass", detail))

    def log_fail(self, detail=""):
        self.log(LOGINFO, _summary("fail", detail))

    def log_skip(self, detail=""):
        self.log(LOGINFO, _summary("skip", detail))

    def log_error(self, detail=""):
        self.log(LOGERROR, _summary("error", detail))

    # -- configuration ---------------------------------------------------

    def config(self, name, default=None):
        """First line of ``config/<name>`` (through the ``config`` hook)."""
        return self.app.config.get(name, default)

    def config_list(self, name):
        return self.app.config.get_list(name)

    def config_map(self, name):
        return self.app.config.get_map(name)

    def parsed_config(self, name, parse):
        """``parse(lines)`` for the lines of ``config/<name>`` (as
        ``config_list`` gives them, the config hook included), worked out
        once per process and again only when the lines change.

        For the parsed form of a configuration file (networks, compiled
        patterns, sets): it is kept on the plugin, keyed by the lines it
        came from, so it is configuration shared by every connection, never
        connection state. ``parse`` must not depend on the session; what it
        logs is logged once per change, in the session that noticed it.
        """
        lines = tuple(self.config_list(name))
        cache = self.__dict__.setdefault("_parsed_config", {})
        entry = cache.get(name)
        if entry is not None and entry[0] == lines:
            return entry[1]
        value = parse(lines)
        cache[name] = (lines, value)
        return value

    def parsed_config_map(self, name, parse=None):
        """``parse(mapping)`` (the mapping itself without ``parse``) of
        ``config/<name>.cdb``, read once per process and again only when the
        file changes (``Config.mtime_key``): no copy of a large map per
        connection. Treat the result as read-only."""
        key = self.app.config.mtime_key(name + ".cdb")
        cache = self.__dict__.setdefault("_parsed_config", {})
        entry = cache.get(name + ".cdb")
        if entry is not None and entry[0] == key:
            return entry[1]
        mapping = self.config_map(name)
        value = parse(mapping) if parse is not None else mapping
        cache[name + ".cdb"] = (key, value)
        return value

    @property
    def resolver(self):
        """The process's shared DNS resolver (``qpsmtpd.dns``)."""
        return self.app.resolver

    # -- DNS (qpsmtpd.dns) -------------------------------------------------
    #
    # Each returns a ``qpsmtpd.dns.Answer``: a list of the records as text,
    # with ``status`` NOERROR/NODATA/NXDOMAIN/TEMPFAIL and ``temporary``.
    # They never raise. Answers are cached per connection (``session`` may
    # be None: no cache). Lookups take ``self.dns_timeout`` seconds at most
    # when a plugin sets it (from its ``timeout`` argument), else
    # ``config/dns_timeout``. qpsmtpd.dns (and dnspython with it) is only
    # imported by the first lookup, so sites without DNS plugins skip it.

    dns_timeout = None

    def resolve(self, session, name, rdtype="A"):
        return self.resolver.lookup(name, rdtype, _dns_cache(session), self.dns_timeout)

    def resolve_many(self, session, queries):
        """``[(name, type), ...]`` looked up at once: one timeout for all."""
        return self.resolver.lookup_many(queries, _dns_cache(session), self.dns_timeout)

    def resolve_later(self, session, queries):
        """Send ``queries`` now; ``.wait()`` on the result reads the answers
        (blocking at most one timeout; see ``qpsmtpd.dns``)."""
        return self.resolver.start(queries, _dns_cache(session), self.dns_timeout)

    def resolve_a(self, session, name):
        return self.resolve(session, name, "A")

    def resolve_aaaa(self, session, name):
        return self.resolve(session, name, "AAAA")

    def resolve_mx(self, session, name):
        """Exchange names, lowest preference first (``.`` is a null MX)."""
        return self.resolve(session, name, "MX")

    def resolve_ns(self, session, name):
        return self.resolve(session, name, "NS")

    def resolve_txt(self, session, name):
        """One text per TXT record, its strings joined without separator."""
        return self.resolve(session, name, "TXT")

    def resolve_ptr(self, session, ip_or_name):
        """PTR names of an IP address (or of a name like ``...in-addr.arpa``)."""
        from .dns import ip_address, ptr_name
        address = ip_address(ip_or_name)
        name = ptr_name(address) if address is not None else ip_or_name
        return self.resolve(session, name, "PTR")

    # -- reject / reject_type (§9.5) ---------------------------------------

    def get_reject(self, session, smtp_msg="unspecified error", log_msg=""):
        """Turn this plugin's ``reject`` argument into a hook result.

        ``reject 0`` -> logs ``fail, tolerated`` and returns ``DECLINED``;
        ``reject naughty`` -> logs ``fail, NAUGHTY`` and defers the rejection
        to the ``naughty`` plugin; otherwise logs ``fail`` and returns
        ``(get_reject_type(), smtp_msg)``.
        """
        reject = self.args.get("reject")
        suffix = f", {log_msg}" if log_msg else ""
        if reject is not None and str(reject) in ("0", ""):
            self.log(LOGINFO, f"fail, tolerated{suffix}")
            return DECLINED
        if str(reject).lower() == "naughty":
            self.log(LOGINFO, f"fail, NAUGHTY{suffix}")
            return self.store_deferred_reject(session, smtp_msg)
        self.log(LOGINFO, f"fail{suffix}")
        return self.get_reject_type(), smtp_msg

    def get_reject_type(self, default=DENY, reject_type=None):
        reject_type = reject_type or self.args.get("reject_type")
        return reject_type_code(reject_type, default)

    def store_deferred_reject(self, session, smtp_msg):
        """Queue a rejection for the ``naughty`` plugin; returns ``DECLINED``.

        The connection note ``naughty`` holds a list of messages (the
        original joined them with CR LF, which left stray CRs in replies);
        ``naughty_reject_type`` keeps the first deferring plugin's type.
        """
        notes = session.connection.notes
        message = f"({self.name}) {smtp_msg}"
        pending = notes.get("naughty")
        if isinstance(pending, list):
            pending.append(message)
        else:
            notes["naughty"] = [message]
        if not notes.get("naughty_reject_type") and self.args.get("reject_type"):
            notes["naughty_reject_type"] = self.args["reject_type"]
        return DECLINED

    def is_naughty(self, session, *value):
        """Without ``value``: the pending deferred rejection (or None).

        With a value: set the notes ``naughty`` and ``rejected``; returns
        True (logging ``skip, naughty``) when the value is true.
        """
        notes = session.connection.notes
        if not value:
            return notes.get("naughty") or None
        notes["naughty"] = notes["rejected"] = value[0]
        if value[0]:
            self.log(LOGINFO, "skip, naughty")
            return True
        return False

    def is_immune(self, session):
        """True for relay clients, whitelisted hosts and whitelisted senders."""
        connection = session.connection
        if connection.relay_client:
            self.log(LOGINFO, "skip, relay client")
            return True
        if connection.notes.get("whitelisthost"):
            self.log(LOGINFO, "skip, whitelisted host")
            return True
        if session.transaction.notes.get("whitelistsender"):
            self.log(LOGINFO, "skip, whitelisted sender")
            return True
        return False

    def is_immune_sender(self, sender, entries):
        """True (with a debug line) when a sender list cannot apply: the list
        is empty, or the sender is null or lacks a user or host part."""
        if not entries:
            self.log(LOGDEBUG, "skip, empty list")
            return True
        if sender is None or sender.format() == "<>":
            self.log(LOGDEBUG, "skip, null sender")
            return True
        if not sender.host or not sender.user:
            self.log(LOGDEBUG, "skip, missing user or host")
            return True
        return False

    def adjust_karma(self, session, delta):
        """Add evidence to the session's karma score; returns ``delta``."""
        notes = session.connection.notes
        notes["karma"] = (notes.get("karma") or 0) + delta
        self.log(LOGINFO, f"karma {delta} ({notes['karma']})")
        return delta

    def store_auth_results(self, session, text):
        """Add one Authentication-Results part (``spf=pass ...``).

        Kept per transaction (the original kept them per connection, so a
        second message in the session carried the first one's results);
        parts found at connect time go to the connection and are copied into
        every transaction.
        """
        if session.transaction.started_mail:
            session.transaction.auth_results.append(text)
        else:
            session.connection.auth_results.append(text)
        self.log(LOGDEBUG, f"auth-results: {text}")

    # -- shared state ------------------------------------------------------

    def open_store(self, name, redis=None):
        """This plugin's view of the shared state store (``qpsmtpd.store``):
        the ``store`` URL argument, else ``db_dir``, else a legacy ``redis``
        ``host:port``, else ``config/store``, else ``var/db/qpsmtpd.sqlite``."""
        from .store import open_store, resolve_url
        url = resolve_url(self.args.get("store"), self.args.get("db_dir"), redis,
                          site_url=self.config("store"))
        return open_store(url, name, log=lambda text: self.log(LOGINFO, text))

    # -- files -------------------------------------------------------------

    def spool_dir(self):
        return self.app.spool_dir()

    def temp_file(self, session):
        return session.transaction.temp_file()

    def temp_dir(self, session, mode=0o700):
        return session.transaction.temp_dir(mode)

    # -- small predicates ---------------------------------------------------

    @staticmethod
    def is_localhost(ip):
        ip = str(ip or "")
        return ip.startswith("127.") or ip == "::1" or ":127." in ip

    @staticmethod
    def is_valid_ip(ip):
        """IPv4 or IPv6 syntax, refusing 0.0.0.0 and 255.255.255.255.

        The original refused any IPv4 text containing ``255``; we check the
        whole address instead.
        """
        try:
            address = ipaddress.ip_address(str(ip).strip("[]"))
        except ValueError:
            return False
        if address.version == 4:
            return str(address) not in ("0.0.0.0", "255.255.255.255")
        return True

    @staticmethod
    def ip_address(text):
        """``ipaddress`` object for ``text`` (brackets, ``%zone`` allowed;
        IPv4-mapped IPv6 becomes IPv4), or None when it is not an address."""
        try:
            address = ipaddress.ip_address(str(text or "").strip("[]").split("%")[0])
        except ValueError:
            return None
        if address.version == 6 and address.ipv4_mapped is not None:
            return address.ipv4_mapped
        return address

    @classmethod
    def normal_ip(cls, text):
        """An address as one canonical string, or the text itself when it is
        not an address; for comparing IPs written in different forms."""
        address = cls.ip_address(text)
        return str(address) if address is not None else str(text or "")

    @staticmethod
    def is_ipv6(ip):
        try:
            return ipaddress.ip_address(str(ip)).version == 6
        except ValueError:
            return False

    @staticmethod
    def tildeexp(path):
        """``~`` and ``~user`` expansion (``~`` from ``$HOME``)."""
        if not path.startswith("~"):
            return path
        head, sep, tail = path[1:].partition("/")
        if not head:
            home = os.environ.get("HOME") or pwd.getpwuid(os.getuid()).pw_dir
        else:
            try:
                home = pwd.getpwnam(head).pw_dir
            except KeyError:
                return path
        return home + (sep + tail if sep else "")


def reject_type_code(reject_type, default=DENY):
    """``perm``/``hard`` -> DENY, ``temp``/``soft`` -> DENYSOFT,
    ``disconnect`` -> DENY_DISCONNECT, ``temp_disconnect`` -> DENYSOFT_DISCONNECT."""
    if not reject_type:
        return default
    return {
        "perm": DENY, "hard": DENY,
        "temp": DENYSOFT, "soft": DENYSOFT,
        "disconnect": DENY_DISCONNECT,
        "temp_disconnect": DENYSOFT_DISCONNECT,
    }.get(str(reject_type).lower(), default)


def _dns_cache(session):
    from .dns import connection_cache
    return connection_cache(getattr(session, "connection", None))


def _summary(verdict, detail):
    return f"{verdict}, {detail}" if detail else verdict


__all__ = ["Plugin", "PluginError", "plugin_name", "reject_type_code", "Level"]
