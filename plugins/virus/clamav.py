"""virus/clamav - scan messages with ClamAV's command-line scanner.

At ``data_post`` the received message is handed to ``clamscan`` or
``clamdscan`` on its standard input (``<scanner> --stdout --no-summary
[--config-file=<clamd_conf>] -``); the scanner reads the spool file itself,
so the message is never held in memory and the scanner needs no access to
the spool directory. ``clamdscan`` (recommended: clamd keeps the database
loaded) streams it on to clamd; ``clamscan`` loads the database for every
message.

Arguments are ``name=value`` words (a single leading word that is the path
of an executable is taken as ``clamscan_path``):

  clamscan_path=PATH   the scanner (default ``/usr/local/bin/clamscan``).
  clamd_conf=PATH      clamd's configuration, passed as ``--config-file`` to
                       clamdscan (clamscan has no such option). Default
                       ``/etc/clamd.conf`` (Debian: ``/etc/clamav/clamd.conf``).
  action=add-header|reject   what to do with an infected message: add
                       ``X-Virus-Found: Yes`` and ``X-Virus-Details: <names>``
                       at the end of the header (default), or refuse it with
                       ``552 Virus Found: <names>``.
  max_size=BYTES       larger messages are not scanned (default 524288).
  declined_on_fail     when the scanner fails (exit code other than 0/1, a
                       signal, or ``timeout``), let the message through; the
                       default answers ``452 Message denied temporarily``.
  timeout=SECONDS      the scanner is killed after this long (default 60).
  tmp_dir=PATH         accepted for old configurations; unused (no copy of
                       the message is made).
  back_compat          accepted and ignored (it added options of ClamAV
                       before 0.80 that today's scanners refuse).

A clean message gets ``X-Virus-Checked: Checked by ClamAV on <me>`` at the
end of the header. An unknown argument is logged (LOGERROR ``Unrecognized
argument '<arg>' to clamav plugin``) and ignored, as in the original.

Log lines: LOGINFO ``pass, clean``, ``fail, Virus(es) found: <names>``,
``skip, too large (<size> vs <max>)``; LOGERROR ``error, ClamAV error:
<command>: <exit code>``.

Differences from the original: the message goes to the scanner's standard
input instead of as a file name (no chmod of the spool file); a hanging
scanner is killed after ``timeout``; a scanner that does not exist
stops the start with a clear message instead of failing every message.

Example ``config/plugins`` line::

  virus/clamav clamscan_path=/usr/bin/clamdscan clamd_conf=/etc/clamav/clamd.conf action=reject
"""

import os
import re
import subprocess

from qpsmtpd.constants import DECLINED, DENY, DENYSOFT, LOGDEBUG, LOGERROR, LOGINFO
from qpsmtpd.plugin import Plugin, PluginError

DEFAULT_SCANNER = "/usr/local/bin/clamscan"
DEFAULT_CLAMD_CONF = "/etc/clamd.conf"
DEFAULT_MAX_SIZE = 512 * 1024
DEFAULT_TIMEOUT = 60.0
_PATH = re.compile(r"/[-/_.a-zA-Z0-9]*\Z")


class ClamAV(Plugin):
    def register(self, *args):
        self.scanner = DEFAULT_SCANNER
        self.clamd_conf = DEFAULT_CLAMD_CONF
        self.action = "add-header"
        self.max_size = DEFAULT_MAX_SIZE
        self.declined_on_fail = False
        self.timeout = DEFAULT_TIMEOUT
        args = list(args)
        if args and _PATH.match(args[0]) and os.access(args[0], os.X_OK):
            self.scanner = args.pop(0)
        for arg in args:
            name, sep, value = arg.partition("=")
            if name == "max_size" and value.isdigit():
                self.max_size = int(value)
            elif name == "clamscan_path" and _PATH.match(value):
                self.scanner = value
            elif name == "clamd_conf" and _PATH.match(value):
                self.clamd_conf = value
            elif name == "tmp_dir" and _PATH.match(value):
                pass
            elif name == "action" and value in ("add-header", "reject"):
                self.action = value
            elif name == "timeout" and _is_number(value):
                self.timeout = float(value)
            elif arg == "back_compat":
                self.log(LOGINFO, "back_compat is ignored")
            elif arg == "declined_on_fail":
                self.declined_on_fail = True
            elif name == "loglevel" and sep:
                self.set_loglevel(value)
            else:
                self.log(LOGERROR, f"Unrecognized argument '{arg}' to clamav plugin")
        if not os.access(self.scanner, os.X_OK):
            raise PluginError(f"virus/clamav: the scanner {self.scanner} is not an "
                              "executable file (set clamscan_path=)")

    def command(self):
        command = [self.scanner, "--stdout", "--no-summary"]
        if os.path.basename(self.scanner).startswith("clamdscan"):
            command.append(f"--config-file={self.clamd_conf}")
        command.append("-")
        return command

    def hook_data_post(self, session):
        transaction = session.transaction
        if transaction.data_size > self.max_size:
            self.log_skip(f"too large ({transaction.data_size} vs {self.max_size})")
            return DECLINED
        command = self.command()
        self.log(LOGDEBUG, f"Running: {' '.join(command)}")
        try:
            with open(transaction.body_filename(), "rb") as message:
                result = subprocess.run(command, stdin=message, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.log_error(f"ClamAV error: {' '.join(command)}: no answer within "
                           f"{_shown(self.timeout)} s")
            return self.failed()
        except OSError as exc:
            self.log_error(f"ClamAV error: {' '.join(command)}: {exc.strerror or exc}")
            return self.failed()
        output = result.stdout.decode("utf-8", "replace")
        names = [line.rsplit(" ", 2)[-2] for line in output.splitlines()
                 if line.endswith(" FOUND") and " " in line[:-6]]
        self.log(LOGINFO, f"clamscan results: {' '.join(names) or output.strip()}")
        if result.returncode < 0:
            self.log_error(f"clamscan exited with signal: {-result.returncode}")
            return self.failed()
        if result.returncode == 1:
            found = " ".join(names) or output.strip()
            self.log(LOGINFO, f"fail, Virus(es) found: {found}")
            if self.action == "reject":
                return DENY, f"Virus Found: {found}"
            transaction.header.add("X-Virus-Found", "Yes")
            transaction.header.add("X-Virus-Details", found)
            return DECLINED
        if result.returncode:
            self.log_error(f"ClamAV error: {' '.join(command)}: {result.returncode}")
            return self.failed()
        self.log_pass("clean")
        transaction.header.add("X-Virus-Checked", f"Checked by ClamAV on {session.me}")
        return DECLINED

    def failed(self):
        return DECLINED if self.declined_on_fail else DENYSOFT


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def _shown(number):
    return str(int(number)) if float(number).is_integer() else str(number)
