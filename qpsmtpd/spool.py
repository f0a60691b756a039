"""The message body on disk.

``Spool`` receives the message as DATA arrives (already dot-unstuffed, LF
line endings) and keeps it in memory only up to ``size_threshold`` bytes
(``config/size_threshold``, default 0: straight to disk). Past that it goes
to ``<spool_dir><epoch>:<pid>:<counter>``, created with ``O_EXCL`` and mode
0600, so the worker's memory does not grow with the message.

Readers open their own file object (``open()``), so several plugins can read
the message as a stream without disturbing each other. ``discard()``
removes the file; the transaction calls it when it ends.

Writes go through a 256 KiB buffer, so the disk sees large blocks whatever
the size of the pieces DATA delivers. Once the message is on disk,
``write`` is the buffered file's own ``write``: no Python code runs per
piece.
"""

import errno
import io
import itertools
import os
import time

_counter = itertools.count()


class Spool:
    """A write-once, read-many message store."""

    buffer_size = 256 * 1024

    def __init__(self, spool_dir, size_threshold=0, on_spool=None):
        self.spool_dir = spool_dir
        self.size_threshold = size_threshold
        self.path = None
        self._memory = []
        self._memory_size = 0
        self._file = None
        self._on_spool = on_spool

    @property
    def size(self):
        """Bytes written so far."""
        if self._file is not None:
            return self._file.tell()
        return self._memory_size

    def write(self, data):
        """Append bytes (until the message goes to disk; then the file's
        ``write`` takes this method's place)."""
        self._memory.append(data)
        self._memory_size += len(data)
        if self._memory_size >= self.size_threshold:
            self._to_disk()

    def _to_disk(self):
        if not self.spool_dir:
            raise OSError(errno.ENOENT, "no usable spool_dir")
        while True:
            path = os.path.join(
                self.spool_dir,
                f"{int(time.time())}:{os.getpid()}:{next(_counter)}")
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue
            break
        self.path = path
        self._file = os.fdopen(fd, "w+b", buffering=self.buffer_size)
        self._file.write(b"".join(self._memory))
        self._memory = []
        self._memory_size = 0
        self.write = self._file.write
        if self._on_spool:
            self._on_spool()

    def flush(self):
        if self._file is not None:
            self._file.flush()

    def filename(self):
        """The spool file's path, writing the message to disk if needed."""
        if self._file is None:
            self._to_disk()
        self._file.flush()
        return self.path

    def open(self, offset=0):
        """A new binary file object positioned at ``offset``."""
        if self._file is None:
            stream = io.BytesIO(b"".join(self._memory))
        else:
            self._file.flush()
            stream = open(self.path, "rb")
        stream.seek(offset)
        return stream

    def discard(self):
        """Close and delete; safe to call twice."""
        self.__dict__.pop("write", None)
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None
        if self.path:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            self.path = None
        self._memory = []
        self._memory_size = 0
