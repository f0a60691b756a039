"""queue/qmail-queue — hand accepted mail to qmail's queue program.

Runs ``qmail-queue`` (or a program with the same interface: qmail-scanner,
spamdyke's, netqmail's replacements ...) once per message: the message goes
to the program's fd 0 — the queued form, header fields added by the server
first, LF line endings, streamed in chunks — then the envelope to its fd 1::

    F<sender>\\0T<recipient>\\0T<recipient>\\0\\0

(addresses without angle brackets; the null sender is ``F\\0``). Only when
the program exits 0 has it queued the message, and only then does the
client get ``250``.

Arguments::

    queue/qmail-queue [<path>] [timeout <seconds>]

``<path>``
    The program, an absolute path. Default ``$QMAIL/bin/qmail-queue``
    (``QMAIL`` defaults to ``/var/qmail``). When the environment variable
    ``QMAILQUEUE`` is set it overrides both, as in qpsmtpd.

``timeout <seconds>``
    How long the program may take to read the message and exit (default
    600, the time RFC 5321 gives a client to wait for the reply to the
    final dot). Past it the program is killed and the client gets ``451``.
    Not in qpsmtpd, which waited for ever.

Replies the client sees:

* ``250 Queued! <unix time> qp <child pid> <Message-Id>`` — the Message-Id
  header's first line in ``<>`` (``<>`` when the message has none);
* exit codes 11-40, which qmail-queue(8) documents as permanent: ``552
  Unable to queue message (<code>, <meaning>)`` with RFC 3463 code
  ``5.1.3`` for 11 (address too long) and ``5.3.0`` otherwise;
* any other exit code: ``451 Unable to queue message (<code>, <meaning>)``
  (code ``4.3.0``, ``4.4.1``/``4.4.2`` for the network codes 72-74). The
  meanings are qmail-queue(8)'s: 51 out of memory, 52 timeout, 53 write
  error (disk full?), 54 cannot read the message or envelope, 55 cannot read
  the configuration, 56 network problem, 61 trouble with the qmail home
  directory, 62-66 trouble creating files in the queue, 71 temporary
  refusal, 72 connection timed out, 73 connection rejected, 74
  communication failed, 81 internal bug, 91 envelope format error;
* the program missing or not executable, killed by a signal, not reading
  the whole message or envelope, or past the timeout: ``451 Unable to queue
  message (<what happened>)``. The client never sees a path; the log has
  the details (``error, ...``).

A temporary failure is returned as ``DECLINED`` (qpsmtpd's code), so a
later queue plugin in ``config/plugins`` may still take the message.

Log: ``(for <pid>) Queuing qp <child pid> to <path>`` at LOGNOTICE, then
``pass, queued ...`` or ``error, ...``.

Differences from qpsmtpd: exit codes are explained and 11-40 answered as
permanent (qpsmtpd answered ``451 Unable to queue message (<code>)`` for
everything); a program that dies from a signal or hangs gets a clear 451;
a relative path is refused at start-up.

Example ``config/plugins`` lines::

    queue/qmail-queue
    queue/qmail-queue /var/qmail/bin/qmail-scanner-queue.pl timeout 900
"""

import os
import select
import signal
import subprocess
import time

from qpsmtpd.constants import DECLINED, DENY, LOGNOTICE, LOGWARN, OK
from qpsmtpd.plugin import Plugin, PluginError

DEFAULT_TIMEOUT = 600

# qmail-queue(8): exit code -> (meaning, RFC 3463 code). 11-40 are permanent.
EXIT_CODES = {
    11: ("address too long", "5.1.3"),
    31: ("mail server permanently refuses the message", "5.3.0"),
    51: ("out of memory", "4.3.0"),
    52: ("timeout", "4.3.0"),
    53: ("write error, disk full?", "4.3.0"),
    54: ("unable to read the message or envelope", "4.3.0"),
    55: ("unable to read a configuration file", "4.3.0"),
    56: ("problem making a network connection", "4.3.0"),
    61: ("problem with the qmail home directory", "4.3.0"),
    62: ("problem with the queue directory", "4.3.0"),
    63: ("problem with queue/pid", "4.3.0"),
    64: ("problem with queue/mess", "4.3.0"),
    65: ("problem with queue/intd", "4.3.0"),
    66: ("problem with queue/todo", "4.3.0"),
    71: ("mail server temporarily refuses the message", "4.3.0"),
    72: ("connection to mail server timed out", "4.4.1"),
    73: ("connection to mail server rejected", "4.4.1"),
    74: ("communication with mail server failed", "4.4.2"),
    81: ("internal bug", "4.3.0"),
    91: ("envelope format error", "4.3.0"),
}


class QueueFailure(Exception):
    """The program could not be run or fed; the text is the client's."""


class QmailQueue(Plugin):
    def register(self, *args):
        path = None
        if args and args[0] != "timeout":
            path, args = args[0], args[1:]
        options = self.parse_args(args, {"timeout": str(DEFAULT_TIMEOUT)})
        unknown = set(options) - {"timeout", "loglevel"}
        if unknown:
            self.log(LOGWARN, "WARNING: Ignoring additional arguments: "
                              + " ".join(sorted(unknown)))
        try:
            self.timeout = float(options["timeout"])
        except ValueError:
            raise PluginError(f"queue/qmail-queue: timeout is not a number: "
                              f"{options['timeout']!r}") from None
        if path is None:
            path = os.environ.get("QMAIL", "/var/qmail") + "/bin/qmail-queue"
        self.queue_exec = os.environ.get("QMAILQUEUE") or path
        if not os.path.isabs(self.queue_exec):
            raise PluginError(f"queue/qmail-queue: the program must be an absolute "
                              f"path: {self.queue_exec!r}")
        if not os.access(self.queue_exec, os.X_OK):
            # Not fatal: qmail may be installed after us; until then every
            # message gets a 451.
            self.log(LOGWARN, f"WARNING: {self.queue_exec} is not executable")

    def hook_queue(self, session):
        transaction = session.transaction
        deadline = time.monotonic() + self.timeout
        pipes = []
        try:
            pipes.append(os.pipe())
            pipes.append(os.pipe())
        except OSError as exc:
            for fd in (fd for pipe in pipes for fd in pipe):
                os.close(fd)
            self.log_error(f"cannot create pipes: {exc.strerror}")
            return DECLINED, "Unable to queue message (out of file descriptors)"
        (message_r, message_w), (envelope_r, envelope_w) = pipes
        try:
            child = subprocess.Popen([self.queue_exec], stdin=message_r,
                                     stdout=envelope_r, close_fds=True)
        except OSError as exc:
            for fd in (message_r, message_w, envelope_r, envelope_w):
                os.close(fd)
            self.log_error(f"cannot run {self.queue_exec}: {exc.strerror or exc}")
            return DECLINED, "Unable to queue message (unable to exec qmail-queue)"
        os.close(message_r)
        os.close(envelope_r)
        self.log(LOGNOTICE, f"(for {os.getpid()}) Queuing qp {child.pid} to {self.queue_exec}")
        problem = None
        try:
            try:
                _write_all(message_w, transaction.message_chunks(), deadline)
            finally:
                os.close(message_w)
            _write_all(envelope_w, [_envelope(transaction)], deadline)
        except BrokenPipeError:
            problem = "did not read the whole message and envelope"
        except TimeoutError:
            problem = "timed out"
            child.kill()
        except OSError as exc:
            # the spool could not be read: the envelope is incomplete, so
            # the program cannot queue, but make sure of it
            problem = f"could not be fed the message ({exc.strerror or exc})"
            child.kill()
        finally:
            os.close(envelope_w)
        wait = max(0.0, deadline - time.monotonic()) if problem is None else 5
        try:
            status = child.wait(wait)
        except subprocess.TimeoutExpired:
            child.kill()
            status = child.wait()
            problem = problem or "timed out"
        return self.verdict(transaction, child.pid, status, problem)

    def verdict(self, transaction, pid, status, problem):
        """Map the child's exit status to the hook result."""
        if status < 0:
            name = _signal_name(-status)
            self.log_error(f"{self.queue_exec} (qp {pid}) killed by signal {name}"
                           + (f", {problem}" if problem else ""))
            if problem:
                return DECLINED, f"Unable to queue message (qmail-queue {problem})"
            return DECLINED, f"Unable to queue message (qmail-queue killed by signal {name})"
        if status == 0 and problem is None:
            self.log_pass(f"queued by {self.queue_exec} (qp {pid})")
            return OK, f"Queued! {int(time.time())} qp {pid} {_message_id(transaction)}"
        if status == 0:
            # exit 0 without the whole envelope cannot be a real queueing
            self.log_error(f"{self.queue_exec} (qp {pid}) exited 0 but {problem}")
            return DECLINED, f"Unable to queue message (qmail-queue {problem})"
        meaning, esc = EXIT_CODES.get(
            status, ("permanent problem", "5.3.0") if 11 <= status <= 40
            else ("temporary problem", "4.3.0"))
        self.log_error(f"{self.queue_exec} (qp {pid}) exited {status}: {meaning}")
        text = f"Unable to queue message ({status}, {meaning}) (#{esc})"
        return (DENY if esc[0] == "5" else DECLINED), text


def _envelope(transaction):
    parts = [b"F" + _raw(transaction.sender)]
    parts.extend(b"T" + _raw(recipient) for recipient in transaction.recipients)
    return b"\0".join(parts) + b"\0\0"


def _raw(address):
    text = address.address() if address is not None else ""
    return text.encode("utf-8", "surrogateescape")


def _write_all(fd, chunks, deadline):
    """Write every chunk to the pipe ``fd``, giving up at ``deadline``.

    Raises BrokenPipeError when the reader has gone, TimeoutError when it
    stops reading.
    """
    os.set_blocking(fd, False)
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            if not poller.poll(min(remaining, 1.0) * 1000):
                continue
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                continue
            view = view[written:]


def _message_id(transaction):
    header = transaction.header
    value = (header.get("Message-Id") if header is not None else None) or ""
    value = value.split("\n", 1)[0].strip()
    if not (value.startswith("<") and value.endswith(">")):
        value = f"<{value}>"
    return value


def _signal_name(number):
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)
