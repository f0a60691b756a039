"""queue/maildir — deliver accepted mail into a Maildir.

Writes each message into ``<maildir>/tmp/``, flushes it to disk, links it
into ``<maildir>/new/`` and flushes ``new/`` too, so the ``250`` the client
gets means the message is on disk (Maildir's delivery protocol). The file
holds::

    Return-Path: <sender>
    Delivered-To: recipient@domain       (one line per recipient, the
                                          last one first, as qpsmtpd did)
    <the message as queued: header fields added by the server, the
     client's header, the body; LF line endings>

The file name is ``<seconds>.P<pid>M<microseconds>Q<counter>.<hostname>``
(``/`` and ``:`` in the host name written ``\\057`` and ``\\072``, as the
Maildir specification asks).

Arguments (positional, as in qpsmtpd)::

    queue/maildir <maildir> [<subdir pattern>] [<mode>]

``<maildir>``
    The Maildir, or with a pattern the directory under which the per-recipient
    Maildirs live. A relative path is relative to the working directory the
    daemon starts in. ``tmp``, ``new`` and ``cur`` (and any missing parent
    directory) are created when missing, at start-up and again before each
    delivery.

``<subdir pattern>``
    Deliver one copy per recipient into ``<maildir>/<pattern>``, where ``%l``
    is the recipient's local part, ``%d`` its domain and ``%u`` the whole
    address. The pattern must contain at least one of them. In the
    substituted parts every character other than ``-A-Za-z0-9+_.,@=``
    becomes ``_`` and letters are lower-cased (``User@Example.COM`` and
    ``user@example.com`` share a Maildir); a bare ``postmaster`` recipient
    gets the domain of ``config/me``. A part that would name ``.`` or ``..``
    is refused. Each copy carries only its own ``Delivered-To`` line. The
    same address given twice is delivered once.

``<mode>``
    Octal permissions of directories the plugin creates (default ``700``);
    files get the same without execute bits (``770`` gives ``660``).

Replies the client sees:

* ``250 Queued! <Message-Id>`` (the Message-Id header's first line, empty
  when the message has none);
* ``451 queue error (<step>)`` — the step that failed: ``mkdir``, ``open``,
  ``write``, ``close``, ``link``, ``sync`` or ``recipient``. The reason is
  logged (``error, ...``). Nothing is left in ``tmp/`` and nothing in
  ``new/``: with a pattern, copies already delivered to other recipients of
  the same message are taken back out of their ``new/`` (a copy a mail
  reader has already moved on cannot be), so the client's retry does not
  duplicate them. The result code is ``DECLINED``, so a later queue plugin
  in ``config/plugins`` may still take the message.

Differences from qpsmtpd: the file and ``new/`` are fsynced before ``OK``;
the file is created exclusively; ``Delivered-To`` is written into the file
instead of being added to the transaction's header (so other plugins do
not see it); expanded pattern parts are lower-cased and checked for ``..``;
on failure the temporary file is removed; a missing maildir argument, a
pattern without ``%l``/``%d``/``%u`` or a bad mode stop start-up with a
message instead of silently disabling the plugin.

Example ``config/plugins`` lines::

    queue/maildir /home/vmail/Maildir
    queue/maildir /var/spool/qpdeliver %d/%l 770
"""

import errno
import itertools
import os
import re
import socket
import time

from qpsmtpd.constants import DECLINED, LOGWARN, OK
from qpsmtpd.plugin import Plugin, PluginError

# One counter per process: with the pid and the microseconds it makes the
# name unique even for several deliveries within one microsecond.
_counter = itertools.count()

_UNSAFE = re.compile(r"[^-A-Za-z0-9+_.,@=]")
_PATTERN = re.compile(r"%[ldu]")


class DeliveryError(Exception):
    """One step of a delivery failed; ``step`` is what the client sees."""

    def __init__(self, step, detail):
        super().__init__(detail)
        self.step = step


class Maildir(Plugin):
    def register(self, maildir=None, subdirs=None, mode=None, *extra):
        if not maildir:
            raise PluginError("queue/maildir: maildir directory not specified")
        self.maildir = os.path.abspath(self.tildeexp(maildir))
        self.subdirs = None
        if subdirs is not None:
            if not _PATTERN.search(subdirs):
                raise PluginError("queue/maildir: sub directory does not contain "
                                  f"a substitution parameter: {subdirs!r}")
            if any(part in ("", ".", "..") for part in _PATTERN.sub("x", subdirs).split("/")):
                raise PluginError("queue/maildir: sub directory pattern must be a "
                                  f"relative path without . or .. parts: {subdirs!r}")
            self.subdirs = subdirs
        self.dir_mode = 0o700
        if mode is not None:
            if not re.fullmatch(r"[0-7]{3}", mode) or int(mode, 8) == 0:
                raise PluginError(f"queue/maildir: mode is not an octal number: {mode!r}")
            self.dir_mode = int(mode, 8)
        self.file_mode = self.dir_mode & 0o666
        if extra:
            self.log(LOGWARN, f"WARNING: Ignoring additional arguments: {' '.join(extra)}")
        self.hostname = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
        if self.subdirs is None:
            try:
                self.make_maildir(self.maildir)
            except OSError as exc:
                # Not fatal: the directory may appear (a mount) before mail
                # does; each delivery tries again and answers 451 meanwhile.
                self.log_error(f"cannot create maildir {self.maildir}: {_reason(exc)}")

    # -- the hook -------------------------------------------------------------

    def hook_queue(self, session):
        transaction = session.transaction
        recipients = transaction.recipients
        delivered = []  # paths in new/, taken back if a later copy fails
        try:
            if self.subdirs is None:
                # qpsmtpd added each recipient at the top of the header, so
                # the last recipient comes first; keep that order.
                lines = [r.address() for r in reversed(recipients)]
                delivered.append(self.deliver(transaction, self.maildir, lines))
            else:
                seen = set()
                for recipient in recipients:
                    key = recipient.address().lower()
                    if key in seen:
                        continue
                    seen.add(key)
                    maildir = self.recipient_maildir(session, recipient)
                    delivered.append(
                        self.deliver(transaction, maildir, [recipient.address()]))
        except DeliveryError as exc:
            self.log_error(str(exc))
            for path in delivered:
                _remove(path)
            return DECLINED, f"queue error ({exc.step})"
        for path in delivered:
            self.log_pass(f"delivered to {path}")
        return OK, f"Queued! {_message_id(transaction)}".rstrip()

    # -- helpers --------------------------------------------------------------

    def recipient_maildir(self, session, recipient):
        """``<maildir>/<pattern>`` for one recipient; DeliveryError if unsafe."""
        user = _safe(recipient.user or "")
        host = _safe(recipient.host or session.me or "localhost")
        values = {"%l": user, "%d": host, "%u": f"{user}@{host}"}
        subdir = _PATTERN.sub(lambda m: values[m.group(0)], self.subdirs)
        parts = subdir.split("/")
        if any(part in ("", ".", "..") for part in parts):
            raise DeliveryError(
                "recipient", f"recipient {recipient.format()} gives the unsafe "
                             f"maildir path {subdir!r}; not delivered")
        return os.path.join(self.maildir, *parts)

    def make_maildir(self, maildir):
        """Create ``maildir`` (and missing parents), ``tmp``, ``new``, ``cur``."""
        missing = []
        path = maildir
        while not os.path.isdir(path):
            missing.append(path)
            parent = os.path.dirname(path)
            if parent == path:
                break
            path = parent
        for path in reversed(missing):
            self._mkdir(path)
        for sub in ("tmp", "new", "cur"):
            path = os.path.join(maildir, sub)
            if not os.path.isdir(path):
                self._mkdir(path)

    def _mkdir(self, path):
        try:
            os.mkdir(path, self.dir_mode)
        except FileExistsError:
            if os.path.isdir(path):
                return  # another process won the race
            raise
        os.chmod(path, self.dir_mode)  # not narrowed by the umask

    def deliver(self, transaction, maildir, delivered_to):
        """Write one copy into ``maildir``; returns its path in ``new/``.

        Raises DeliveryError after removing whatever it wrote.
        """
        try:
            self.make_maildir(maildir)
        except OSError as exc:
            raise DeliveryError("mkdir", f"cannot create maildir {maildir}: "
                                         f"{_reason(exc)}") from exc
        name = self.unique_name()
        tmp_path = os.path.join(maildir, "tmp", name)
        new_path = os.path.join(maildir, "new", name)
        try:
            fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                         self.file_mode)
        except OSError as exc:
            raise DeliveryError("open", f"could not open {tmp_path}: {_reason(exc)}") from exc
        step = "write"
        try:
            os.fchmod(fd, self.file_mode)
            with os.fdopen(fd, "wb") as handle:
                fd = None
                self._write_message(handle, transaction, delivered_to)
                step = "sync"
                handle.flush()
                os.fsync(handle.fileno())
                step = "close"
            step = "link"
            _link(tmp_path, new_path)
        except OSError as exc:
            if fd is not None:
                os.close(fd)
            _remove(tmp_path)
            raise DeliveryError(step, f"could not {step} {tmp_path}: {_reason(exc)}") from exc
        _remove(tmp_path)
        try:
            _fsync_dir(os.path.join(maildir, "new"))
        except OSError as exc:
            _remove(new_path)
            raise DeliveryError("sync", f"could not sync {maildir}/new: "
                                        f"{_reason(exc)}") from exc
        return new_path

    def _write_message(self, handle, transaction, delivered_to):
        sender = transaction.sender.format() if transaction.sender is not None else "<>"
        lines = [f"Return-Path: {sender}\n"]
        lines.extend(f"Delivered-To: {address}\n" for address in delivered_to)
        handle.write("".join(lines).encode("utf-8", "surrogateescape"))
        for chunk in transaction.message_chunks():
            handle.write(chunk)

    def unique_name(self):
        seconds, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
        return (f"{seconds}.P{os.getpid()}M{nanoseconds // 1000}"
                f"Q{next(_counter)}.{self.hostname}")


def _safe(text):
    return _UNSAFE.sub("_", text).lower()


def _message_id(transaction):
    header = transaction.header
    value = header.get("Message-Id") if header is not None else None
    return (value or "").split("\n", 1)[0].strip()


def _link(source, target):
    try:
        os.link(source, target)
    except OSError as exc:
        # Some file systems (FAT, some network mounts) have no hard links;
        # rename is atomic too and O_EXCL already made the name unique.
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if os.path.lexists(target):
            raise
        os.rename(source, target)


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def _reason(exc):
    return exc.strerror or str(exc)
