"""One client connection: who is talking to us, and what we learnt.

Fields (qpsmtpd's names): ``remote_ip``, ``remote_port``, ``remote_host``
(PTR name, or ``[ip]``/``Unknown`` when there is none), ``remote_info``
(``ident@host`` under tcpserver with ident, else ``remote_host``),
``local_ip``, ``local_port``, ``relay_client``, ``hello`` (``'helo'`` or
``'ehlo'`` once greeted), ``hello_host``, ``notes`` (a dict plugins share for
the life of the TCP connection), ``tls`` (None, or once TLS is up a dict:
``protocol`` (``TLSv1.3``), ``cipher``, ``bits``, ``peer_subject`` and
``peer_issuer`` of a verified client certificate, else None), ``auth_user``,
``auth_mechanism`` (lower case, as the auth hooks get it; both set by a
successful AUTH), ``auth_results`` (Authentication-Results parts found
before any transaction, e.g. ``iprev=pass``), and ``id``: a session id
``<epoch seconds>-<pid>-<n>`` made at first use in the process serving the
connection (log plugins write it instead of the pid; ``%i`` in
``logging/file``).
"""

import itertools
import os
import time

_ids = itertools.count(1)


class Connection:
    """State of one TCP connection."""

    def __init__(self, remote_ip="", remote_port=0, remote_host=None,
                 remote_info=None, local_ip="", local_port=0,
                 relay_client=False):
        self.remote_ip = remote_ip
        self.remote_port = remote_port
        self.remote_host = remote_host or (f"[{remote_ip}]" if remote_ip else "Unknown")
        self.remote_info = remote_info or self.remote_host
        self.local_ip = local_ip
        self.local_port = local_port
        self.relay_client = relay_client
        self.hello = None
        self.hello_host = None
        self.notes = {}
        self.auth_results = []
        self.tls = None
        self.auth_user = None
        self.auth_mechanism = None
        self.started = time.time()

    @property
    def id(self):
        ident = self.notes.get("logging-session-id")
        if ident is None:
            ident = self.notes["logging-session-id"] = "%08d-%04d-%d" % (
                time.time(), os.getpid(), next(_ids))
        return ident

    @classmethod
    def from_environment(cls, env):
        """Build from tcpserver's variables (``TCPREMOTEIP`` ...).

        Returns None when ``TCPREMOTEIP`` is not set.
        """
        remote_ip = env.get("TCPREMOTEIP")
        if not remote_ip:
            return None
        remote_host = env.get("TCPREMOTEHOST") or f"[{remote_ip}]"
        ident = env.get("TCPREMOTEINFO")
        return cls(
            remote_ip=remote_ip,
            remote_port=_port(env.get("TCPREMOTEPORT")),
            remote_host=remote_host,
            remote_info=f"{ident}@{remote_host}" if ident else remote_host,
            local_ip=env.get("TCPLOCALIP", ""),
            local_port=_port(env.get("TCPLOCALPORT")),
        )

    def clone(self):
        """A copy for the session after STARTTLS: addresses, relay_client and
        the same notes dict are kept; ``hello``/``hello_host``, the TLS and
        AUTH facts are not (RFC 3207 4.2: what the client said before the
        handshake is forgotten), so relay_client is what it was before a
        successful AUTH."""
        relay_client = self.relay_client
        if self.auth_user:
            relay_client = bool(self.notes.pop("relay_client_before_auth", False))
        new = Connection(self.remote_ip, self.remote_port, self.remote_host,
                         self.remote_info, self.local_ip, self.local_port,
                         relay_client)
        new.notes = self.notes
        new.auth_results = list(self.auth_results)
        new.started = self.started
        return new

    def __repr__(self):
        return (f"<Connection {self.remote_ip}:{self.remote_port} "
                f"{self.remote_host!r} -> {self.local_ip}:{self.local_port}>")


def _port(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
