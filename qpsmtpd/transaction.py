"""One mail transaction: MAIL, RCPT..., DATA.

A ``Transaction`` lives from one reset to the next (MAIL, RSET, the end of
DATA, STARTTLS, disconnect). Plugins read and change:

* ``sender`` — the envelope sender (``Address``; ``<>`` for bounces);
* ``recipients`` — list of ``Address``; ``add_recipient``/``remove_recipient``;
* ``header`` — the parsed header block (``qpsmtpd.header.Header``), set when
  the empty line after the headers arrives;
* ``notes`` — a dict shared by plugins for this transaction only;
* ``auth_results`` — Authentication-Results parts for this message;
* the body, as a stream: ``body_fh()`` is a new file object positioned at the
  first body byte (the separator line included, as in qpsmtpd);
  ``message_chunks()`` yields the complete message as it will be queued
  (rendered header, then body), never the whole message at once;
  ``data_chunks()`` the same dot-stuffed for SMTP DATA;
* ``data_size`` (bytes received, LF-normalised, unstuffed) and
  ``body_length`` (``data_size`` minus the header bytes).

``close()`` removes the spool file and every ``temp_file``/``temp_dir``.
"""

import io
import itertools
import os
import time

from .spool import Spool

_temp_counter = itertools.count()


class Transaction:
    """State of one mail transaction."""

    def __init__(self, spool_dir=None, size_threshold=0, on_spool=None):
        self.sender = None
        self.recipients = []
        self.header = None
        self.notes = {}
        self.auth_results = []
        self.started = time.time()
        self.started_mail = False   # a MAIL command began this transaction
        self.started_data = False
        self.data_size = 0
        self.body_start = 0
        self.header_size = 0
        self.spool = None
        self._spool_dir = spool_dir
        self._size_threshold = size_threshold
        self._on_spool = on_spool
        self._temp_paths = []

    # -- envelope ---------------------------------------------------------------

    def add_recipient(self, address):
        self.recipients.append(address)

    def remove_recipient(self, address):
        """Remove every recipient equal to ``address`` (Address or text)."""
        self.recipients = [r for r in self.recipients if not r == address]

    # -- body ---------------------------------------------------------------------

    def body_write(self, data):
        """Append raw message bytes (LF endings) to the spool."""
        if self.spool is None:
            self.spool = Spool(self._spool_dir, self._size_threshold,
                               self._on_spool)
        self.spool.write(data)

    def body_fh(self):
        """A new binary file object positioned at the body start."""
        if self.spool is None:
            return io.BytesIO(b"")
        return self.spool.open(self.body_start)

    def body_filename(self):
        """Path of the spool file (the whole received message, header too)."""
        if self.spool is None:
            self.body_write(b"")
        return self.spool.filename()

    @property
    def body_length(self):
        return self.data_size - self.header_size if self.header is not None else 0

    def body_as_bytes(self):
        """The body in memory — only for small messages and tests."""
        with self.body_fh() as stream:
            return stream.read()

    def message_chunks(self, chunk_size=256 * 1024):
        """The message as it will be queued: header, then body, in chunks."""
        if self.header is not None:
            yield self.header.as_bytes()
        with self.body_fh() as stream:
            while True:
                chunk = stream.read(chunk_size)
                if not chunk:
                    return
                yield chunk

    def data_chunks(self, line_end=b"\n"):
        """The message as an SMTP DATA stream: leading dots doubled, lines
        ending in ``line_end``, then the terminating ``.`` line."""
        at_line_start = True
        for chunk in self.message_chunks():
            if not chunk:
                continue
            stuffed = chunk.replace(b"\n.", b"\n..")
            if at_line_start and stuffed[:1] == b".":
                stuffed = b"." + stuffed
            at_line_start = stuffed.endswith(b"\n")
            if line_end != b"\n":
                stuffed = stuffed.replace(b"\n", line_end)
            yield stuffed
        yield (b"." if at_line_start else line_end + b".") + line_end

    def message_size(self):
        """Size in bytes of what ``message_chunks`` yields."""
        header = len(self.header.as_bytes()) if self.header is not None else 0
        return header + self.data_size - self.header_size

    # -- temporary files -------------------------------------------------------

    def temp_file(self):
        """A unique path in the spool dir (not created); removed at close()."""
        path = os.path.join(self._spool_dir or "/tmp",
                            f"{int(time.time())}:{os.getpid()}:t{next(_temp_counter)}")
        self._temp_paths.append(path)
        return path

    def temp_dir(self, mode=0o700):
        """A new directory (``mode``) in the spool dir; removed at close()."""
        path = self.temp_file()
        os.mkdir(path, mode)
        return path

    def close(self):
        """Discard the spool and temporary files; safe to call twice."""
        if self.spool is not None:
            self.spool.discard()
            self.spool = None
        for path in self._temp_paths:
            if os.path.isdir(path) and not os.path.islink(path):
                import shutil  # only temp_dir() users need it
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.unlink(path)
                except OSError:
                    pass
        self._temp_paths = []

    def __repr__(self):
        return (f"<Transaction from={self.sender} to={len(self.recipients)} "
                f"size={self.data_size}>")
