"""virus/clamdscan - scan messages for viruses with ClamAV's clamd.

At ``data_post`` the message, as it will be queued, is streamed to clamd
with the ``INSTREAM`` command (length-prefixed chunks, read from the spool
piece by piece, never the whole message in memory) over clamd's unix
socket or TCP. clamd needs no access to the spool directory.

* virus found: karma -1 and the session is flagged naughty (a later
  ``naughty`` plugin refuses what else it sends); with ``deny_viruses yes``
  the message is refused with ``552 Virus found: <name>``, otherwise it goes
  on with ``X-Virus-Found: Yes`` and ``X-Virus-Details: <name>`` at the top
  of the header;
* clean: ``X-Virus-Checked: by <clamd version> on <me>`` and
  ``X-Virus-Found: No`` at the top of the header, e.g.
  ``X-Virus-Checked: by ClamAV 1.4.6 on mx.example.org``.

Fields of these three names that the message arrived with are removed
first, so a forged ``X-Virus-Found: No`` cannot pass for our verdict.

Arguments (``key value`` pairs):

  clamd_socket PATH      clamd's LocalSocket (default
                         ``/var/run/clamav/clamd.ctl``, Debian's).
  clamd_port PORT        use TCP instead (clamd's TCPSocket); overrides
                         clamd_socket.
  clamd_host HOST        the TCP host (default ``localhost``).
  deny_viruses yes|no    refuse infected messages (default yes) or tag them.
  defer_on_error yes|no  when clamd is down, slow, or cannot scan the
                         message: yes answers ``452 Unable to scan for
                         viruses`` (the sender retries); no (default) lets
                         the message through unscanned with a log line.
  max_size KB            larger messages are not scanned (default 1024). Keep
                         it below clamd's StreamMaxLength.
  scan_all 1|0           1 (default) scans every message; 0 only multipart
                         ones (plain text cannot carry an attachment).
  timeout SECONDS        for the whole exchange with clamd (default 60).

Sessions already flagged naughty are not scanned (they are refused anyway).

Log lines: LOGINFO ``pass, clean``, ``fail, found virus <name>``,
``skip, naughty``, ``skip, too big (<size>)``, ``skip, not multipart``;
LOGERROR ``error, <why>``.

Differences from the original: the message is always streamed (INSTREAM);
the original passed the spool file's name over the unix socket, which
needed clamd to read the spool (chmod, AllowSupplementaryGroups). Incoming
X-Virus-* fields are removed. A clamd that hangs cannot hold the session
beyond ``timeout``.

Example ``config/plugins`` line::

  virus/clamdscan deny_viruses yes max_size 1024
"""

import socket
import struct
import time

from qpsmtpd.constants import DECLINED, DENY, DENYSOFT, LOGINFO
from qpsmtpd.plugin import Plugin, PluginError

DEFAULT_SOCKET = "/var/run/clamav/clamd.ctl"
DEFAULT_TIMEOUT = 60.0
VIRUS_FIELDS = ("X-Virus-Found", "X-Virus-Details", "X-Virus-Checked")
REPLY_LIMIT = 64 * 1024


class ClamdError(Exception):
    """clamd could not be reached, timed out, or could not scan."""


class ClamdClient:
    """clamd's command protocol (``z`` commands, NUL-terminated replies),
    one command per connection."""

    def __init__(self, socket_path=DEFAULT_SOCKET, host=None, port=None,
                 timeout=DEFAULT_TIMEOUT):
        self.socket_path = socket_path
        self.host = host
        self.port = port
        self.timeout = timeout

    @property
    def where(self):
        return f"{self.host}:{self.port}" if self.port else self.socket_path

    def version(self):
        """clamd's version text, e.g. ``ClamAV 1.4.6/27432/...``."""
        return self.command(b"VERSION")

    def ping(self):
        return self.command(b"PING") == "PONG"

    def command(self, name, chunks=None):
        """Send ``z<name>``; with ``chunks`` (iterable of bytes) stream them
        as INSTREAM data. Returns the reply text; raises ClamdError."""
        deadline = time.monotonic() + self.timeout
        sock = self._connect(deadline)
        try:
            try:
                self._send(sock, b"z" + name + b"\0", deadline)
                if chunks is not None:
                    for chunk in chunks:
                        if chunk:
                            self._send(sock, struct.pack("!L", len(chunk)) + chunk,
                                       deadline)
                    self._send(sock, struct.pack("!L", 0), deadline)
            except ClamdError as exc:
                # clamd closes the stream when it refuses it (size limit);
                # its reason is more useful than our broken pipe.
                reason = self._read_reply(sock, deadline, quiet=True)
                if reason:
                    raise ClamdError(f"clamd: {reason}") from exc
                raise
            return self._read_reply(sock, deadline)
        finally:
            sock.close()

    def instream(self, chunks):
        """Scan a byte stream. Returns None when clean, the virus name when
        found; raises ClamdError when clamd could not scan it."""
        reply = self.command(b"INSTREAM", chunks)
        if reply.endswith(" FOUND"):
            return reply[:-len(" FOUND")].split(": ", 1)[-1]
        if reply.endswith(": OK"):
            return None
        raise ClamdError(f"clamd: {reply}")

    # -- the socket -----------------------------------------------------------

    def _connect(self, deadline):
        try:
            if self.port:
                return socket.create_connection((self.host or "localhost", int(self.port)),
                                                timeout=_remaining(deadline))
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(_remaining(deadline))
            try:
                sock.connect(self.socket_path)
            except BaseException:
                sock.close()
                raise
            return sock
        except TimeoutError as exc:
            raise ClamdError(f"timeout connecting to clamd at {self.where}") from exc
        except (OSError, ValueError) as exc:
            raise ClamdError(f"cannot connect to clamd at {self.where}: "
                             f"{getattr(exc, 'strerror', None) or exc}") from exc

    def _send(self, sock, data, deadline):
        try:
            sock.settimeout(_remaining(deadline))
            sock.sendall(data)
        except TimeoutError as exc:
            raise ClamdError(f"timeout sending to clamd at {self.where}") from exc
        except OSError as exc:
            raise ClamdError(f"lost clamd at {self.where} while sending: "
                             f"{exc.strerror or exc}") from exc

    def _read_reply(self, sock, deadline, quiet=False):
        received = b""
        try:
            while not received.endswith(b"\0") and len(received) < REPLY_LIMIT:
                sock.settimeout(_remaining(deadline))
                data = sock.recv(4096)
                if not data:
                    break
                received += data
        except (TimeoutError, OSError) as exc:
            if quiet:
                return received.rstrip(b"\0\n").decode("utf-8", "replace")
            if isinstance(exc, TimeoutError):
                raise ClamdError(f"timeout waiting for clamd at {self.where}") from exc
            raise ClamdError(f"lost clamd at {self.where} while reading: "
                             f"{exc.strerror or exc}") from exc
        text = received.rstrip(b"\0\n").decode("utf-8", "replace")
        if not text and not quiet:
            raise ClamdError(f"clamd at {self.where} closed the connection "
                             "without an answer")
        return text


def _remaining(deadline):
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    return left


class ClamdScan(Plugin):
    def register(self, *args):
        self.args = self.parse_args(args, defaults={
            "deny_viruses": "yes", "defer_on_error": "no", "max_size": "1024",
            "scan_all": "1"})
        try:
            self.max_size = float(self.args["max_size"]) * 1024
            timeout = float(self.args.get("timeout", DEFAULT_TIMEOUT))
        except ValueError as exc:
            raise PluginError(f"virus/clamdscan: max_size and timeout must be "
                              f"numbers: {exc}") from None
        self.deny_viruses = _yes(self.args["deny_viruses"])
        self.defer_on_error = _yes(self.args["defer_on_error"])
        self.scan_all = _yes(self.args["scan_all"])
        port = self.args.get("clamd_port")
        if port is not None and not str(port).isdigit():
            raise PluginError(f"virus/clamdscan: clamd_port must be a number, not {port!r}")
        self.client = ClamdClient(self.args.get("clamd_socket") or DEFAULT_SOCKET,
                                  self.args.get("clamd_host") or "localhost",
                                  int(port) if port else None, timeout)

    def hook_data_post(self, session):
        transaction = session.transaction
        if self.is_naughty(session):
            self.log_skip("naughty")
            return DECLINED
        if transaction.data_size > self.max_size:
            self.log_skip(f"too big ({transaction.data_size})")
            return DECLINED
        if not self.scan_all and not self.is_multipart(transaction):
            return DECLINED
        try:
            version = self.client.version().split("/")[0] or "ClamAV"
            found = self.client.instream(transaction.message_chunks())
        except ClamdError as exc:
            self.log_error(str(exc))
            if self.defer_on_error:
                return DENYSOFT, "Unable to scan for viruses"
            return DECLINED
        header = transaction.header
        for name in VIRUS_FIELDS:
            header.delete(name)
        if found:
            self.log(LOGINFO, f"fail, found virus {found}")
            self.store_deferred_reject(session, f"Virus found: {found}")
            self.adjust_karma(session, -1)
            if self.deny_viruses:
                return DENY, f"Virus found: {found}"
            header.add("X-Virus-Details", found, 0)
            header.add("X-Virus-Found", "Yes", 0)
            return DECLINED
        self.log_pass("clean")
        header.add("X-Virus-Found", "No", 0)
        header.add("X-Virus-Checked", f"by {version} on {session.me}", 0)
        return DECLINED

    def is_multipart(self, transaction):
        content_type = transaction.header.get("Content-Type") if transaction.header \
            is not None else None
        if not content_type:
            self.log_skip("no content-type")
            return False
        text = " ".join(content_type.split()).lower()
        if "multipart/" not in text or "boundary=" not in text:
            self.log_skip("not multipart")
            return False
        return True


def _yes(value):
    return str(value).strip().lower() in ("1", "yes", "true", "on")
