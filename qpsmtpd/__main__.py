"""The per-connection program ``qpsmtpd`` (also ``python -m qpsmtpd``).

Serves one SMTP session on the socket it was handed on fd 0/1, as tcpserver
(ucspi-tcp), inetd/xinetd or systemd (``Accept=yes``) start it. Peer
details come from tcpserver's variables (``TCPREMOTEIP``,
``TCPREMOTEHOST``, ``TCPREMOTEINFO``, ``TCPREMOTEPORT``, ``TCPLOCALIP``,
``TCPLOCALPORT``) or, without them, from the socket itself (the host name
then comes from a PTR lookup through ``qpsmtpd.dns``, bounded by
``config/dns_timeout``); ``RELAYCLIENT`` is honoured by the ``relay``
plugin.

Other uses::

    qpsmtpd --plugin-doc NAME     print a plugin's manual (its docstring)
    qpsmtpd --hooks               print every hook and its plugins, in order

A configuration that cannot be loaded answers the client ``421`` and logs
the reason, so a broken deployment never accepts mail silently.
"""

import os
import socket
import sys

from .app import App
from .connection import Connection
from .constants import LOGCRIT
from .lineio import LineIO
from .plugin import PluginError
from .smtp import SMTP


PROG = "qpsmtpd"


def main(argv=None):
    options = parse_options(sys.argv[1:] if argv is None else argv)
    os.environ.pop("ENV", None)
    config_dirs = config_search_path(options.config_dir)

    if options.plugin_doc:
        return plugin_doc(options.plugin_doc, config_dirs)
    if options.hooks:
        app = App(config_dirs).load_plugins()
        print(app.dispatcher.hook_order())
        return 0

    try:
        sock = socket.socket(fileno=os.dup(0))
        peer = sock.getpeername()
    except OSError as exc:
        sys.stderr.write(
            f"getpeername failed: {PROG} must be called from tcpserver, "
            f"(x)inetd or a similar program which passes a socket to stdin ({exc})\n")
        return 1
    connection = Connection.from_environment(os.environ)
    io = LineIO(sock)
    try:
        app = App(config_dirs).load_plugins()
    except (PluginError, OSError) as exc:
        App(config_dirs).log(LOGCRIT, f"cannot load plugins: {exc}")
        io.write(b"421 Service temporarily unavailable, try again later\r\n")
        return 1
    if connection is None:
        connection = connection_from_socket(sock, peer, app.resolver)
    SMTP(app, io, connection).run()
    io.close()
    return 0


class _Options:
    """What ``parse_options`` found (argparse's names)."""

    def __init__(self, config_dir=None, plugin_doc=None, hooks=False):
        self.config_dir = config_dir
        self.plugin_doc = plugin_doc
        self.hooks = hooks


def parse_options(args):
    """The command line; ``argparse`` only for what a session never uses.

    Every connection starts this program, so the usual command lines (none,
    or ``--config-dir DIR`` / ``--config-dir=DIR``, repeated) are read here
    without importing ``argparse`` (and the ``gettext``/``locale`` it pulls
    in). Anything else — ``--help``, ``--plugin-doc``, ``--hooks``, an
    abbreviation, a mistake — goes to ``argparse``, which answers as it
    always did.
    """
    config_dirs = []
    position = 0
    while position < len(args):
        arg = args[position]
        if arg == "--config-dir" and position + 1 < len(args) \
                and not args[position + 1].startswith("-"):
            config_dirs.append(args[position + 1])
            position += 2
        elif arg.startswith("--config-dir="):
            config_dirs.append(arg[len("--config-dir="):])
            position += 1
        else:
            return _parse_with_argparse(args)
    return _Options(config_dir=config_dirs or None)


def _parse_with_argparse(args):
    import argparse
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Serve one SMTP session on fd 0/1 (tcpserver, inetd, systemd).")
    parser.add_argument("--config-dir", action="append", metavar="DIR",
                        help="configuration directory (repeatable; searched first)")
    parser.add_argument("--plugin-doc", metavar="NAME",
                        help="print the manual of plugin NAME and exit")
    parser.add_argument("--hooks", action="store_true",
                        help="print the hook order of config/plugins and exit")
    return parser.parse_args(args)


def config_search_path(extra_dirs):
    """``--config-dir`` directories first, then the usual search order."""
    if not extra_dirs:
        return None
    from .config import DEFAULT_DIRS
    return [os.path.abspath(d) for d in extra_dirs] + list(DEFAULT_DIRS)


def connection_from_socket(sock, peer, resolver=None):
    """Peer details from the socket (inetd, systemd without tcpserver).

    ``remote_host`` is the peer's first PTR name, looked up with the
    resolver's timeout (``[ip]`` when there is none or the lookup fails);
    the answer stays in the connection's DNS cache for the plugins.
    """
    local = sock.getsockname()
    remote_ip = _plain_ip(peer[0])
    connection = Connection(remote_ip=remote_ip, remote_port=peer[1],
                            local_ip=_plain_ip(local[0]), local_port=local[1])
    if resolver is not None:
        from .dns import connection_cache, reverse_name
        name = reverse_name(remote_ip, resolver, connection_cache(connection))
        if name:
            connection.remote_host = connection.remote_info = name
    return connection


def _plain_ip(ip):
    return ip[7:] if ip.startswith("::ffff:") and "." in ip else ip


def plugin_doc(name, config_dirs):
    """Print a plugin's module docstring, like ``perldoc plugins/NAME``."""
    app = App(config_dirs)
    try:
        cls = app.dispatcher.plugin_class(name.split(":", 1)[0])
    except PluginError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    module = sys.modules.get(cls.__module__)
    text = (module.__doc__ if module else None) or cls.__doc__
    if not text:
        sys.stderr.write(f"plugin {name} has no manual\n")
        return 1
    print(text.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
