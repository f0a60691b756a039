"""auth/auth_flat_file - SMTP AUTH against a flat file of addresses and
clear-text passwords.

Offers PLAIN, LOGIN and CRAM-MD5 (the password is stored in clear, so the
CRAM-MD5 digest can be checked).

Config file ``flat_auth_pw``, one account per line::

  good@example.com:good_pass
  bad@example.com:bad_pass

The user name must be a full address (with ``@``); it is compared without
regard to case, the password exactly (everything after the first ``:``).
The file is read at each attempt (cached until it changes), so an edit
takes effect at once.

Results (the engine turns them into replies, see ``qpsmtpd.auth``):

* user without ``@``, or not in the file: DECLINED (the next auth plugin
  may know the user; with none, ``535``);
* an entry without a password: DENY ``authflat - missing password``;
* the password matches: OK, ``235 <MECH> authentication successful for
  <user> - auth_flat_file``;
* it does not: DENY, ``535 <MECH> authentication failed for <user> from
  <ip> - auth_flat_file - wrong password``.

Log lines: ``pass, clear-text password matches`` / ``pass, CRAM-MD5 digest
matches``, ``fail, wrong password``, ``skip, no such user: <user>``.

Example ``config/plugins`` line::

  auth/auth_flat_file
"""

from qpsmtpd.auth import validate_password
from qpsmtpd.constants import DECLINED, DENY
from qpsmtpd.plugin import Plugin


class AuthFlatFile(Plugin):
    def hook_auth_plain(self, session, mechanism, user, password, digest, ticket):
        return self.authenticate(mechanism, user, password, digest, ticket)

    hook_auth_login = hook_auth_plain
    hook_auth_cram_md5 = hook_auth_plain

    def authenticate(self, mechanism, user, password, digest, ticket):
        user = user.lower()
        if "@" not in user:
            self.log_skip(f"not a full address: {user}")
            return DECLINED
        stored = None
        for line in self.config_list("flat_auth_pw"):
            name, sep, secret = line.partition(":")
            if sep and name.strip().lower() == user:
                stored = secret
                break
        if stored is None:
            self.log_skip(f"no such user: {user}")
            return DECLINED
        if not stored:
            self.log_fail(f"no password for {user}")
            return DENY, "authflat - missing password"
        return validate_password(self, src_clear=stored, attempt_clear=password,
                                 attempt_hash=digest, method=mechanism, ticket=ticket)
