"""queue/exim-bsmtp — hand accepted mail to Exim as batched SMTP.

Writes the transaction as a BSMTP file in the spool directory
(``config/spool_dir``)::

    HELO <me>
    MAIL FROM:<sender>
    RCPT TO:<recipient>            (one per recipient)
    DATA
    <the message as queued, dot-stuffed, LF line endings>
    .
    QUIT

runs ``<exim_path> -bS`` with that file on its standard input, and removes
the file. Exim answers nothing in BSMTP mode when all goes well; any line it
writes is logged, and the last SMTP reply among them decides a failure.

The qpsmtpd user must be listed in Exim's ``trusted_users``: otherwise Exim
still queues the mail but replaces the envelope sender with that user.

Arguments (``key value`` pairs)::

    queue/exim-bsmtp [exim_path /usr/sbin/rsmtp] [timeout 600]

``exim_path``
    The Exim binary (``rsmtp`` or ``exim4``); ``-bS`` is always added.
    Default ``/usr/sbin/rsmtp``.

``timeout``
    Seconds Exim may take (default 600); past it Exim is killed and the
    client gets ``451``. Not in qpsmtpd.

Replies the client sees:

* ``250 Queued!`` — Exim exited 0 and reported no error;
* ``552 <Exim's text>`` — Exim answered one of our commands with a 5xx;
* ``451 <Exim's text>`` — Exim answered with a 4xx;
* ``451 Internal error enqueuing mail`` — the BSMTP file could not be
  written, Exim could not be run, exited non-zero, died from a signal or
  timed out (details in the log, ``error, ...``).

Temporary failures are returned as ``DECLINED`` (qpsmtpd's code), so a later
queue plugin in ``config/plugins`` may still take the message.

Differences from qpsmtpd: a 4xx from Exim is a temporary failure (qpsmtpd
turned every Exim reply into a permanent ``DENY``); ``HELO`` names
``config/me`` rather than the system host name; header lines are
dot-stuffed too; the message is streamed into the file; a timeout.

Example ``config/plugins`` line::

    queue/exim-bsmtp exim_path /usr/sbin/exim4
"""

import os
import re
import signal
import subprocess
import tempfile

from qpsmtpd.constants import DECLINED, DENY, LOGDEBUG, LOGERROR, LOGINFO, OK
from qpsmtpd.plugin import Plugin, PluginError

_REPLY = re.compile(r"(\d\d\d)[\s-](\S.*)")
INTERNAL = "Internal error enqueuing mail"


class EximBsmtp(Plugin):
    def register(self, *args):
        self.args = self.parse_args(args, {"exim_path": "/usr/sbin/rsmtp", "timeout": "600"})
        self.exim_path = self.args["exim_path"]
        try:
            self.timeout = float(self.args["timeout"])
        except ValueError:
            raise PluginError(f"queue/exim-bsmtp: timeout is not a number: "
                              f"{self.args['timeout']!r}") from None
        if not os.access(self.exim_path, os.X_OK):
            # qpsmtpd went on too; every message gets a 451 until it exists.
            self.log(LOGERROR, f"Could not find exim at {self.exim_path}; "
                               "please set exim_path in config/plugins")

    def hook_queue(self, session):
        try:
            fd, path = tempfile.mkstemp(prefix=f"exim-bsmtp.{os.getpid()}.",
                                        dir=self.spool_dir() or "/tmp")
        except OSError as exc:
            self.log_error(f"Couldn't create tempfile: {exc.strerror or exc}")
            return DECLINED, INTERNAL
        try:
            try:
                with os.fdopen(fd, "wb") as bsmtp:
                    self.write_bsmtp(bsmtp, session)
            except OSError as exc:
                self.log_error(f"could not write {path}: {exc.strerror or exc}")
                return DECLINED, INTERNAL
            return self.run_exim(path)
        finally:
            try:
                os.unlink(path)
            except OSError as exc:
                self.log(LOGERROR, f"unlink: {path}: {exc.strerror}")

    def write_bsmtp(self, out, session):
        transaction = session.transaction
        sender = transaction.sender.format() if transaction.sender is not None else "<>"
        commands = [f"HELO {session.me}", f"MAIL FROM:{sender}"]
        commands.extend(f"RCPT TO:{r.format()}" for r in transaction.recipients)
        commands.append("DATA")
        out.write(("\n".join(commands) + "\n").encode("utf-8", "surrogateescape"))
        for chunk in transaction.data_chunks():
            out.write(chunk)
        out.write(b"QUIT\n")

    def run_exim(self, path):
        command = [self.exim_path, "-bS"]
        self.log(LOGDEBUG, f"executing cmd {' '.join(command)} < {path}")
        try:
            with open(path, "rb") as stdin:
                completed = subprocess.run(command, stdin=stdin, stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.log_error(f"{self.exim_path} -bS timed out after {self.timeout:g} s")
            return DECLINED, INTERNAL
        except OSError as exc:
            self.log_error(f"Could not execute {self.exim_path}: {exc.strerror or exc}")
            return DECLINED, INTERNAL
        reply = None
        for line in completed.stdout.decode("utf-8", "replace").splitlines():
            self.log(LOGERROR, f"exim: {line}")
            match = _REPLY.match(line)
            if match:
                reply = (int(match.group(1)), match.group(2))
        status = completed.returncode
        self.log(LOGDEBUG, f"Exitcode from exim: {status}")
        if reply and 400 <= reply[0] < 600:
            self.log_error(f"BSMTP enqueue failed; response {reply[0]} ({reply[1]})")
            return (DENY if reply[0] >= 500 else DECLINED), reply[1]
        if status < 0:
            self.log_error(f"{self.exim_path} -bS killed by signal {_signal_name(-status)}")
            return DECLINED, INTERNAL
        if status != 0 or reply:
            self.log_error(f"BSMTP enqueue failed; exitcode {status} from "
                           f"{self.exim_path} -bS")
            return DECLINED, INTERNAL
        self.log(LOGINFO, "pass, Enqueued to exim via BSMTP")
        return OK, "Queued!"

def _signal_name(number):
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)
