"""Line-oriented I/O on the client socket.

``LineIO`` reads CRLF/LF-terminated lines from a socket through one buffer,
with a length limit and a timeout per read, and writes replies with
``sendall``. It never holds more than one buffer of input (64 KiB plus one
line limit), whatever the client sends.

* ``read_line(limit)`` returns the next line with its terminator; a line
  longer than ``limit`` comes back in ``limit``-sized pieces without a
  terminator (the caller decides: DATA writes them through, the command loop
  refuses the line); at end of input it returns the last partial line, then
  ``b''``. A read that waits longer than ``timeout`` seconds raises
  ``TimeoutError``.
* ``read_block(limit)`` returns whatever input is buffered (at most
  ``limit`` bytes), else what one read from the socket brings, whatever the
  line boundaries; ``b''`` at end of input. DATA reads the message body this
  way and hands what follows its final dot back with ``unread(data)``, so
  commands pipelined behind the dot are read as commands.
* ``discard_pending()`` drops input already buffered — done right after
  ``220 Go ahead with TLS`` so plaintext pipelined behind STARTTLS can never
  be read as a command inside the encrypted session (CVE-2011-0411).
* ``start_tls(context, timeout)`` discards that plaintext, wraps the socket
  and completes the server-side handshake within ``timeout`` seconds; later
  reads and writes are encrypted. Plaintext that reaches the kernel after
  our last read is fed to the handshake, which then fails: it is never read
  as a command either. On failure the TLS socket is closed and the error
  (``ssl.SSLError``, ``TimeoutError`` or another ``OSError``) is raised.
* A TLS error while reading (a broken record, the client's alert) ends the
  input like end of file does.

The module does not import ``ssl`` (7 ms of start-up for the per-connection
program): the TLS socket comes from the context ``start_tls`` is given, and
``ssl`` is looked up in ``sys.modules``, where whoever made that context put
it.
"""

import select
import socket
import sys


class LineIO:
    """Buffered lines over one connected socket."""

    recv_size = 65536

    def __init__(self, sock, timeout=None):
        self.sock = sock
        self.timeout = timeout
        self._buffer = bytearray()
        self._pos = 0
        self._eof = False
        sock.settimeout(timeout)

    def set_timeout(self, seconds):
        if seconds != self.timeout:
            self.timeout = seconds
            self.sock.settimeout(seconds)

    def read_line(self, limit=65536):
        """Next line (bytes, terminator included), a ``limit``-sized piece of a
        longer line, or ``b''`` at end of input."""
        buffer = self._buffer
        while True:
            end = buffer.find(b"\n", self._pos, self._pos + limit)
            if end >= 0:
                line = bytes(buffer[self._pos:end + 1])
                self._pos = end + 1
                self._compact()
                return line
            if len(buffer) - self._pos >= limit:
                line = bytes(buffer[self._pos:self._pos + limit])
                self._pos += limit
                self._compact()
                return line
            if self._eof or not self._fill():
                line = bytes(buffer[self._pos:])
                self._pos = len(buffer)
                self._compact()
                return line

    def read_block(self, limit=65536):
        """The buffered input (at most ``limit`` bytes), else what one read
        brings (at most ``limit`` bytes); ``b''`` at end of input."""
        buffer = self._buffer
        pos = self._pos
        if pos < len(buffer):
            if pos == 0 and len(buffer) <= limit:
                block = bytes(buffer)
                buffer.clear()
                return block
            end = pos + limit
            block = bytes(buffer[pos:end])
            self._pos = min(end, len(buffer))
            self._compact()
            return block
        if self._eof:
            return b""
        block = self._recv(limit)
        if not block:
            self._eof = True
        return block

    def unread(self, data):
        """Put ``data`` back in front of the input not yet read."""
        if data:
            self._buffer[self._pos:self._pos] = data

    def _recv(self, size):
        try:
            return self.sock.recv(size)
        except socket.timeout as exc:
            raise TimeoutError("client timed out") from exc
        except ConnectionError:
            return b""
        except OSError as exc:
            if _is_tls_error(exc):
                return b""
            raise

    def _fill(self):
        chunk = self._recv(self.recv_size)
        if not chunk:
            self._eof = True
            return False
        self._buffer += chunk
        return True

    def _compact(self):
        if self._pos > 65536 or self._pos == len(self._buffer):
            del self._buffer[:self._pos]
            self._pos = 0

    def pending(self):
        """Bytes already received but not yet read (decrypted bytes the TLS
        layer holds included)."""
        waiting = len(self._buffer) - self._pos
        ssl = sys.modules.get("ssl")
        if ssl is not None and isinstance(self.sock, ssl.SSLSocket):
            try:
                waiting += self.sock.pending()
            except (OSError, ValueError):
                pass
        return waiting

    def discard_pending(self):
        """Drop buffered input; returns how many bytes were dropped."""
        dropped = len(self._buffer) - self._pos
        self._buffer = bytearray()
        self._pos = 0
        return dropped

    def wait_readable(self, seconds):
        """True when input is buffered or arrives within ``seconds``."""
        if self.pending():
            return True
        readable, _, _ = select.select([self.sock], [], [], seconds)
        return bool(readable)

    def write(self, data):
        """Send all of ``data``; raises OSError when the client is gone."""
        self.sock.sendall(data)

    def start_tls(self, context, timeout=None):
        """Discard buffered plaintext, wrap the socket in TLS (server side) and
        complete the handshake within ``timeout`` seconds (default: the read
        timeout). Returns the ``ssl.SSLSocket``; raises ``ssl.SSLError`` or
        ``OSError`` (``TimeoutError``) after closing it when the handshake
        fails."""
        self.discard_pending()
        self._eof = False
        tls = context.wrap_socket(self.sock, server_side=True,
                                  do_handshake_on_connect=False)
        self.sock = tls
        tls.settimeout(self.timeout if timeout is None else timeout)
        try:
            tls.do_handshake()
        except (OSError, ValueError):
            tls.close()
            raise
        tls.settimeout(self.timeout)
        return tls

    def close(self, linger=0.5):
        """Close after sending everything; input still arriving is read and
        dropped for up to ``linger`` seconds (at most 64 KiB), because
        closing with unread input makes the kernel reset the connection and
        the client may lose our last reply (a 421 or 5xx it pipelined past)."""
        sock = self.sock
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(linger)
            dropped = 0
            while dropped < 65536:
                chunk = sock.recv(16384)
                if not chunk:
                    break
                dropped += len(chunk)
        except (OSError, ValueError):
            pass
        sock.close()


def _is_tls_error(exc):
    """True for ``ssl.SSLError`` (``ssl`` is imported by whoever uses TLS)."""
    ssl = sys.modules.get("ssl")
    return ssl is not None and isinstance(exc, ssl.SSLError)
