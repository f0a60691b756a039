"""The application: configuration, log and plugins, built once per process.

``App`` is what the forkserver builds in the parent before it forks (so
children share it copy-on-write) and what the per-connection program builds
for its one session. It holds:

* ``config`` — ``qpsmtpd.config.Config`` with the ``config`` hook attached;
* ``log`` — ``qpsmtpd.log.Log`` at ``config/loglevel``;
* ``dispatcher`` — the plugins of ``config/logging`` and ``config/plugins``
  and the hook table;
* ``resolver`` — the shared DNS resolver (``qpsmtpd.dns``), built on first
  use from ``config/dns_servers``, ``dns_timeout`` and ``dns_tries``.

Plugin directories: ``config/plugin_dirs`` when present, else ``./plugins``
(the working directory, as qpsmtpd's run scripts start in the install
directory) followed by the ``plugins/`` folder of this source tree.

Start-up of the per-connection program: what an ordinary session does not
need before its banner is imported (or compiled) at first use —
``qpsmtpd.auth`` when a plugin offers AUTH, ``qpsmtpd.cdb`` with the first
``.cdb`` map, ``traceback`` when something fails, the address grammar at
the first MAIL or RCPT. A daemon that forks calls ``warm_imports()``
before it forks, so its workers inherit all of that instead of each
paying for it.
"""

import os
import sys

from .config import Config
from .constants import LOGINFO
from .dispatch import Dispatcher
from .log import Log

SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Read before any plugin can answer the config hook (§5.3).
_NOT_HOOKED = frozenset(("logging", "loglevel", "plugin_dirs", "plugins"))


class App:
    """Configuration, log and plugins of one process."""

    def __init__(self, config_dirs=None, log_sink=None, plugin_dirs=None):
        self.log = Log(log_sink)
        self.config = Config(config_dirs, log=self._config_log)
        self.log.level = self.config.loglevel()
        self.dispatcher = Dispatcher(self, plugin_dirs or self.default_plugin_dirs())
        self.log.dispatcher = self.dispatcher
        self.config.hook = self._config_hook
        self._resolver = None

    def default_plugin_dirs(self):
        configured = self.config.get_list("plugin_dirs")
        if configured:
            return configured
        dirs = []
        for directory in (os.path.abspath("plugins"),
                          os.path.join(SOURCE_ROOT, "plugins")):
            if directory not in dirs and os.path.isdir(directory):
                dirs.append(directory)
        return dirs

    def load_plugins(self):
        """Load ``config/logging`` then ``config/plugins``; raises PluginError."""
        logging_lines = self.config.get_list("logging")
        self.dispatcher.load(logging_lines)
        for line in logging_lines:
            self.log(LOGINFO, f"Loaded {line}")
        self.dispatcher.load(self.config.get_list("plugins"))
        if self.dispatcher.offers_auth():
            from .auth import warn_cleartext
            warn_cleartext(self)
        return self

    def spool_dir(self):
        return self.config.spool_dir()

    @property
    def resolver(self):
        """The process's ``qpsmtpd.dns.Resolver``, built from
        ``config/dns_servers``, ``dns_timeout``, ``dns_tries`` on first use."""
        if self._resolver is None:
            from .dns import Resolver
            self._resolver = Resolver.from_config(self.config, log=self.log)
        return self._resolver

    def _config_log(self, level, message):
        self.log(level, message)

    def _config_hook(self, name):
        if name in _NOT_HOOKED:
            return None
        return self.dispatcher.run_config(name)


def warm_imports():
    """Import and compile now what sessions would otherwise load at first
    use (see the module docstring).

    For a daemon's parent, before it forks (and before ``gc.freeze()``):
    the workers then share these modules and patterns copy-on-write. The
    per-connection program does not call it. Safe to call more than once.
    """
    import hashlib  # noqa: F401  (qpsmtpd.auth's password checks)
    import hmac  # noqa: F401
    import secrets  # noqa: F401
    import shutil  # noqa: F401  (Transaction.close of temp_dir() users)
    import traceback  # noqa: F401  (crash paths of dispatch and smtp)

    from . import auth, cdb  # noqa: F401  (AUTH; .cdb maps)
    from .address import _grammar
    _grammar()
    dns = sys.modules.get("qpsmtpd.dns")
    if dns is not None:     # a DNS plugin is loaded: dnspython's lazy parts too
        dns.warm_up()
