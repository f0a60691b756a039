"""tls - STARTTLS (RFC 3207) and implicit TLS on the SMTPS port (RFC 8314).

With a certificate and key this plugin

* offers ``STARTTLS`` in the EHLO reply while the connection is not
  encrypted yet;
* answers ``STARTTLS`` with ``220 Go ahead with TLS``, drops every byte the
  client sent after the command line (so ``STARTTLS\\r\\nRSET\\r\\n`` in one
  packet cannot smuggle a plaintext command into the encrypted session,
  CVE-2011-0411), and completes the handshake. Then the session starts
  afresh (RFC 3207 4.2): the connection object is cloned (addresses, notes
  and relay_client kept; the EHLO name and a plaintext AUTH forgotten), the
  transaction is reset, and the client must say EHLO again;
* on an SMTPS port (465 unless ``smtps_ports`` says otherwise) does the
  handshake in the connect hook, before the greeting, so ``220`` is the
  first thing the client reads inside TLS. This works under any listener
  (forkserver, tcpserver with ``TCPLOCALPORT``, inetd).

The plugin registers its connect, ehlo and unrecognized_command hooks in
front of every other plugin's, wherever it is listed in ``config/plugins``
(the original had to be listed first, and count_unrecognized_commands listed
before it counted STARTTLS as junk).

While STARTTLS is offered and not used, the engine neither offers nor
accepts AUTH (``503 SSL/TLS required before AUTH``) unless
``config/tls_before_auth`` is 0; the offer is recorded on the connection (note
``tls_offered``), so RSET or MAIL do not lift it as they did in the original.

Arguments (qpsmtpd's positional form, then optional ``key value`` pairs)::

  tls [cert [key [ca [dhparam]]]] [smtps_ports 465] [client_cert none]
      [handshake_timeout 30]

* ``cert``, ``key``: PEM files; defaults ``ssl/qpsmtpd-server.crt`` and
  ``ssl/qpsmtpd-server.key``, where ``ssl`` is ``./ssl`` if it exists, else the
  ``ssl`` folder of the first configuration directory that has one, else
  ``config/ssl``. The certificate file may hold the whole chain. Missing:
  the log says ``Cannot locate cert/key!  Run plugins/tls_cert to
  generate`` and the plugin stays inactive (no STARTTLS; STARTTLS gets
  ``500 Unrecognized command``). Unreadable or not matching: the start
  stops with the reason.
* ``ca`` (default ``ssl/qpsmtpd-ca.crt``): the CA that signs client
  certificates; used only with ``client_cert``. qpsmtpd refused to start
  without it; here it is optional.
* ``dhparam`` (default ``ssl/qpsmtpd-dhparam.pem``): used when present.
* ``smtps_ports``: comma-separated local ports that speak TLS from the first
  byte (default ``465``; ``none`` for no SMTPS port).
* ``client_cert``: ``none`` (default: no client certificate is asked for),
  ``optional`` (asked for; a certificate that the CA did not sign fails the
  handshake, none at all is fine) or ``required``. The subject of a
  verified certificate is recorded (see below).
* ``handshake_timeout``: seconds the client has for the handshake
  (default 30).

Config files: ``tls_ciphers`` (OpenSSL cipher list for TLS 1.2 and older,
default ``HIGH``; TLS 1.3 suites are OpenSSL's defaults) and
``tls_protocols``: the versions allowed, in OpenSSL's notation as qpsmtpd
had it, e.g. ``SSLv23:!SSLv2:!SSLv3`` (every TLS version), ``TLSv1.2:TLSv1.3``
or ``TLS:!TLSv1:!TLSv1_1``; SSLv2/SSLv3 are never allowed. Without the file
the minimum is TLS 1.2 (qpsmtpd's default also allowed TLS 1.0 and 1.1,
which RFC 8996 retires). Files are read at start-up (and at SIGHUP), as the
certificate is; an expired or not yet valid certificate is served but
logged as a warning at start-up.

Replies: ``220 Go ahead with TLS``; ``501 Syntax error (no parameters
allowed)`` (RFC 3207; the original answered 500); ``500 TLS already active``
for a second STARTTLS. A failed handshake (the client aborts, sends
plaintext, refuses our certificate, or times out) is logged
(``fail, TLS handshake failed (STARTTLS): <reason>``) and the connection is
closed after the disconnect hooks: the client is in the middle of TLS, so
there is nobody to read a plaintext reply (the original answered ``500 TLS
Negotiation Failed`` and then refused every command). On an SMTPS port the
same happens before any greeting.

After the handshake the connection's ``tls`` is a dict with ``protocol``,
``cipher``, ``bits``, ``peer_subject``, ``peer_issuer`` (client
certificate, ``/CN=...`` form, or None); the connection notes get
``tls_enabled`` 1, ``tls_socket``, ``tls_protocol``, ``tls_cipher`` and
``tls_peer_subject``. The Received header says ``ESMTPS`` (``ESMTPSA``
after AUTH) and ``(<cipher> encrypted)``, as qpsmtpd writes it. Log line:
``pass, TLSv1.3 TLS_AES_256_GCM_SHA384 (256 bits)[, client certificate
<subject>]``.

A certificate for testing: ``plugins/tls_cert`` (see its ``--help``).

Example ``config/plugins`` line::

  tls ssl/mx.example.org.crt ssl/mx.example.org.key smtps_ports 465
"""

import os
import ssl
import time
import warnings

from qpsmtpd.constants import DECLINED, DENY, DONE, LOGINFO, LOGNOTICE, LOGWARN
from qpsmtpd.plugin import Plugin, PluginError

DEFAULT_FILES = ("qpsmtpd-server.crt", "qpsmtpd-server.key", "qpsmtpd-ca.crt",
                 "qpsmtpd-dhparam.pem")
OPTIONS = ("smtps_ports", "client_cert", "handshake_timeout", "loglevel")
CLIENT_CERT_MODES = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL,
                     "required": ssl.CERT_REQUIRED}
_VERSIONS = (("TLSV1", ssl.TLSVersion.TLSv1), ("TLSV11", ssl.TLSVersion.TLSv1_1),
             ("TLSV12", ssl.TLSVersion.TLSv1_2), ("TLSV13", ssl.TLSVersion.TLSv1_3))
_SHORT_NAMES = {"commonName": "CN", "countryName": "C", "stateOrProvinceName": "ST",
                "localityName": "L", "organizationName": "O",
                "organizationalUnitName": "OU", "emailAddress": "emailAddress"}


class TLS(Plugin):
    offers_tls = True   # qpsmtpd.auth: no clear-text warning when active

    def register(self, *args):
        positional = []
        args = list(args)
        while args and args[0] not in OPTIONS and len(positional) < 4:
            positional.append(args.pop(0))
        self.args = self.parse_args(args, defaults={
            "smtps_ports": "465", "client_cert": "none", "handshake_timeout": "30"})
        directory = self.ssl_dir()
        cert, key, ca, dhparam = (positional + [None] * 4)[:4]
        cert = cert or os.path.join(directory, DEFAULT_FILES[0])
        key = key or os.path.join(directory, DEFAULT_FILES[1])
        ca = ca or os.path.join(directory, DEFAULT_FILES[2])
        dhparam = dhparam or os.path.join(directory, DEFAULT_FILES[3])
        if not (os.path.isfile(cert) and os.path.isfile(key)):
            self.log(LOGWARN, "Cannot locate cert/key!  Run plugins/tls_cert to "
                              f"generate ({cert}, {key})")
            return False
        self.smtps_ports = parse_ports(self.args["smtps_ports"])
        try:
            self.handshake_timeout = float(self.args["handshake_timeout"])
        except ValueError:
            raise PluginError(f"tls: handshake_timeout must be seconds, not "
                              f"{self.args['handshake_timeout']!r}") from None
        mode = CLIENT_CERT_MODES.get(str(self.args["client_cert"]).lower())
        if mode is None:
            raise PluginError("tls: client_cert must be none, optional or required")
        if mode != ssl.CERT_NONE and not os.path.isfile(ca):
            raise PluginError(f"tls: client_cert {self.args['client_cert']} needs "
                              f"the CA file {ca}")
        self.context = server_context(
            cert, key, ca=ca if mode != ssl.CERT_NONE else None,
            dhparam=dhparam if os.path.isfile(dhparam) else None,
            ciphers=self.config("tls_ciphers") or "HIGH",
            protocols=self.config("tls_protocols"), client_cert=mode)
        self.check_validity(cert)
        self.register_hook("connect", self.smtps_handshake, unshift=True)
        self.register_hook("ehlo", self.offer_starttls, unshift=True)
        self.register_hook("unrecognized_command", self.starttls, unshift=True)
        self.log(LOGINFO, f"TLS ready with {cert}; SMTPS on port(s) "
                          f"{', '.join(map(str, sorted(self.smtps_ports))) or 'none'}")

    def ssl_dir(self):
        if os.path.isdir("ssl"):
            return "ssl"
        for directory in self.app.config.dirs:
            candidate = os.path.join(directory, "ssl")
            if os.path.isdir(candidate):
                return candidate
        return os.path.join("config", "ssl")

    def check_validity(self, cert):
        """Warn at start-up about a certificate clients will call expired."""
        try:
            decoded = ssl._ssl._test_decode_cert(cert)
            not_before = ssl.cert_time_to_seconds(decoded["notBefore"])
            not_after = ssl.cert_time_to_seconds(decoded["notAfter"])
        except (AttributeError, KeyError, ValueError, OSError, ssl.SSLError):
            return
        now = time.time()
        if not_after < now:
            self.log(LOGWARN, f"certificate {cert} expired on {decoded['notAfter']}: "
                              "clients that check certificates will refuse it")
        elif not_before > now:
            self.log(LOGWARN, f"certificate {cert} is not valid before "
                              f"{decoded['notBefore']}")

    # -- hooks, in the order they fire ------------------------------------------

    def smtps_handshake(self, session):
        """connect: TLS from the first byte on an SMTPS port."""
        connection = session.connection
        if connection.tls or connection.local_port not in self.smtps_ports:
            return DECLINED
        tls = self.handshake(session, "SMTPS")
        if tls is None:
            return DONE
        self.record(connection, tls)
        return DECLINED

    def offer_starttls(self, session, host, *extra):
        """ehlo: offer STARTTLS while the connection is in clear."""
        if session.connection.tls:
            return DECLINED
        notes = session.transaction.notes
        notes.setdefault("capabilities", []).append("STARTTLS")
        notes["tls_enabled"] = 1          # qpsmtpd's "offered" flag
        session.connection.notes["tls_offered"] = True
        return DECLINED

    def starttls(self, session, verb, rest):
        """unrecognized_command: the STARTTLS command."""
        if verb != "starttls":
            return DECLINED
        connection = session.connection
        if connection.tls:
            return DENY, "TLS already active"
        if not connection.notes.get("tls_offered"):
            return DECLINED
        if rest.strip():
            session.respond(501, "Syntax error (no parameters allowed)", esc="5.5.4")
            return DONE
        if not session.respond(220, "Go ahead with TLS", esc="2.0.0"):
            return DONE
        tls = self.handshake(session, "STARTTLS")
        if tls is None:
            return DONE
        fresh = connection.clone()
        session.connection = fresh
        self.record(fresh, tls)
        session.reset_transaction()
        return DONE

    # -- the handshake ---------------------------------------------------------

    def handshake(self, session, why):
        """The TLS socket, or None after a failure (the session is ended)."""
        io = session.io
        dropped = io.pending()
        try:
            tls = io.start_tls(self.context, timeout=self.handshake_timeout)
        except (ssl.SSLError, OSError, ValueError) as exc:
            self.log_fail(f"TLS handshake failed ({why}): {describe(exc)}")
            session.disconnect()
            return None
        if dropped:
            self.log(LOGNOTICE, f"discarded {dropped} bytes sent after STARTTLS "
                                "before the handshake")
        return tls

    def record(self, connection, tls):
        cipher, _version, bits = tls.cipher()
        subject = issuer = None
        peer = tls.getpeercert()
        if peer:
            subject = distinguished_name(peer.get("subject", ()))
            issuer = distinguished_name(peer.get("issuer", ()))
        connection.tls = {"protocol": tls.version(), "cipher": cipher, "bits": bits,
                          "peer_subject": subject, "peer_issuer": issuer}
        notes = connection.notes
        notes["tls_enabled"] = 1
        notes["tls_socket"] = tls
        notes["tls_protocol"] = tls.version()
        notes["tls_cipher"] = cipher
        notes["tls_peer_subject"] = subject
        self.log_pass(f"{tls.version()} {cipher} ({bits} bits)" +
                      (f", client certificate {subject}" if subject else ""))


def server_context(cert, key, ca=None, dhparam=None, ciphers="HIGH", protocols=None,
                   client_cert=ssl.CERT_NONE):
    """The server's ``ssl.SSLContext``; raises PluginError with the reason."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    minimum, maximum = protocol_range(protocols)
    with warnings.catch_warnings():
        # TLS 1.0/1.1 only when tls_protocols asks for them
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = minimum
        context.maximum_version = maximum
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise PluginError(f"tls: cannot use certificate {cert} with key {key}: "
                          f"{describe(exc)}") from None
    try:
        context.set_ciphers(ciphers)
    except ssl.SSLError:
        raise PluginError(f"tls: tls_ciphers {ciphers!r} selects no cipher") from None
    if dhparam:
        try:
            context.load_dh_params(dhparam)
        except (ssl.SSLError, OSError) as exc:
            raise PluginError(f"tls: cannot use {dhparam}: {describe(exc)}") from None
    if client_cert != ssl.CERT_NONE:
        try:
            context.load_verify_locations(cafile=ca)
        except (ssl.SSLError, OSError) as exc:
            raise PluginError(f"tls: cannot use CA file {ca}: {describe(exc)}") from None
        context.verify_mode = client_cert
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    return context


def protocol_range(text):
    """(minimum, maximum) ``ssl.TLSVersion`` for a ``tls_protocols`` value."""
    if not text or not text.strip():
        return ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.MAXIMUM_SUPPORTED
    names = [name for name, _ in _VERSIONS]
    allowed = set()
    for token in text.replace(",", ":").split(":"):
        token = token.strip()
        if not token:
            continue
        negate = token.startswith("!")
        word = token.lstrip("!").upper().replace("_", "").replace(".", "")
        if word in ("SSLV23", "TLS", "ALL"):
            selected = set(names)
        elif word in names:
            selected = {word}
        elif word in ("SSLV2", "SSLV3"):
            selected = set()
        else:
            raise PluginError(f"tls: unknown protocol {token!r} in tls_protocols")
        allowed = allowed - selected if negate else allowed | selected
    chosen = [version for name, version in _VERSIONS if name in allowed]
    if not chosen:
        raise PluginError(f"tls: tls_protocols {text!r} allows no TLS version")
    return chosen[0], chosen[-1]


def parse_ports(text):
    if str(text).lower() in ("none", "0", ""):
        return frozenset()
    ports = set()
    for word in str(text).split(","):
        if not word.strip().isdigit() or not 0 < int(word) < 65536:
            raise PluginError(f"tls: smtps_ports: {word!r} is not a port")
        ports.add(int(word))
    return frozenset(ports)


def distinguished_name(rdns):
    """``/C=DE/O=Example/CN=client`` from ``getpeercert()``'s tuples."""
    return "".join(f"/{_SHORT_NAMES.get(key, key)}={value}"
                   for rdn in rdns for key, value in rdn) or None


def describe(exc):
    if isinstance(exc, TimeoutError) or "timed out" in str(exc):
        return "timed out"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    return str(exc) or type(exc).__name__
