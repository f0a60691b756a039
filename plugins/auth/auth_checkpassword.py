"""auth/auth_checkpassword - SMTP AUTH through a checkpassword program.

Offers PLAIN and LOGIN. For each attempt it runs a program that speaks the
checkpassword interface (qmail's checkpassword, vpopmail's vchkpw,
checkpassword-pam, ...): the program gets ``<user>\\0<password>\\0Y123456\\0``
on file descriptor 3 and, when the password is right, runs the program named
after it (usually ``/bin/true``), which exits 0.

Configuration, either as arguments::

  auth/auth_checkpassword checkpw /usr/local/vpopmail/bin/vchkpw true /bin/true

or in ``config/smtpauth-checkpassword`` (read at each attempt), one line::

  /usr/local/vpopmail/bin/vchkpw /bin/true

Everything after the program on that line is passed as its arguments, so a
program that must run as another user can be started through sudo (which
must be told to leave descriptor 3 alone)::

  /usr/bin/sudo -C4 -u vpopmail /usr/local/vpopmail/bin/vchkpw /bin/true

(The original added ``sudo -C4`` by itself when it guessed it was needed;
here the line says it.) ``true`` defaults to ``/bin/true``. Other argument:
``timeout`` (seconds the program may take, default 10).

Results (replies: see ``qpsmtpd.auth``):

* exit 0: OK ``auth_checkpassword`` (``235 ... - auth_checkpassword``); the
  connection note ``authuser`` is the user;
* exit 111 (the interface's "temporary problem"), a program that cannot be
  started or runs past the timeout: DENYSOFT (``454 Temporary
  authentication failure``; the original answered 535);
* any other exit status: DECLINED (the next auth plugin may try; with none,
  ``535``);
* no program configured, or not executable: DECLINED, with a log line.

The program's standard error goes to the log. Log lines: ``pass, <user>``,
``fail, <program> exited <status> for <user>``, ``error, ...``.

Example ``config/plugins`` line::

  auth/auth_checkpassword checkpw /usr/local/bin/checkpassword true /bin/true
"""

import os
import subprocess

from qpsmtpd.constants import DECLINED, DENYSOFT, LOGINFO, LOGWARN, OK
from qpsmtpd.plugin import Plugin, PluginError

TEMPORARY_FAILURE = 111
# fd 3 becomes the pipe we write to; the program's own stdin is /dev/null.
_SHELL = 'exec "$0" "$@" 3<&0 </dev/null'


class AuthCheckpassword(Plugin):
    def register(self, *args):
        self.args = self.parse_args(args, defaults={"timeout": "10"})
        try:
            self.timeout = float(self.args["timeout"])
        except ValueError:
            raise PluginError("auth_checkpassword: timeout must be seconds") from None
        self.command = None
        if self.args.get("checkpw"):
            self.command = [self.args["checkpw"]]
            self.command.append(self.args.get("true") or "/bin/true")
            if not os.access(self.command[0], os.X_OK):
                self.log(LOGWARN, f"{self.command[0]} is not executable")

    def hook_auth_plain(self, session, mechanism, user, password, digest, ticket):
        command = self.command or (self.config("smtpauth-checkpassword") or "").split()
        if not command:
            self.log_error("no checkpassword program: set checkpw or "
                           "config/smtpauth-checkpassword")
            return DECLINED
        if not os.access(command[0], os.X_OK):
            self.log_error(f"{command[0]} is not executable")
            return DECLINED
        request = b"\0".join(part.encode("utf-8", "surrogateescape")
                             for part in (user, password, "Y123456")) + b"\0"
        try:
            process = subprocess.Popen(
                ["/bin/sh", "-c", _SHELL, *command], stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, close_fds=True)
        except OSError as exc:
            self.log_error(f"cannot run {command[0]}: {exc}")
            return DENYSOFT, "auth_checkpassword - temporary failure"
        try:
            _, errors = process.communicate(request, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            self.log_error(f"{command[0]} took longer than {self.timeout:g} s")
            return DENYSOFT, "auth_checkpassword - temporary failure"
        for line in errors.decode("utf-8", "replace").splitlines()[:10]:
            self.log(LOGINFO, f"{command[0]}: {line}")
        status = process.returncode
        if status == 0:
            session.connection.notes["authuser"] = user
            self.log_pass(user)
            return OK, "auth_checkpassword"
        if status == TEMPORARY_FAILURE or status < 0:
            self.log_error(f"{command[0]} exited {status} (temporary failure) for {user}")
            return DENYSOFT, "auth_checkpassword - temporary failure"
        self.log_fail(f"{command[0]} exited {status} for {user}")
        return DECLINED

    hook_auth_login = hook_auth_plain
