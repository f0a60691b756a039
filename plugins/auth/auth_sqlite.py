"""auth/auth_sqlite - SMTP AUTH against accounts in an SQLite database,
with hashed passwords.

The SQLite counterpart of qpsmtpd's ``auth/auth_vpopmail_sql`` (which reads
vpopmail's MySQL table): one table, a password hash for PLAIN and LOGIN and,
only where CRAM-MD5 is wanted, the clear text. Offers PLAIN, LOGIN and
CRAM-MD5.

Schema::

  CREATE TABLE users (
      address        TEXT PRIMARY KEY COLLATE NOCASE, -- full address
      password_hash  TEXT,     -- e.g. $pbkdf2-sha256$600000$...
      password_clear TEXT,     -- optional; needed only for CRAM-MD5
      active         INTEGER NOT NULL DEFAULT 1
  );

``password_hash`` takes ``$pbkdf2-sha256$``, ``$pbkdf2-sha512$`` and
``$pbkdf2$`` hashes in passlib's format, and, while Python still has its
``crypt`` module (3.12 and older), every crypt(3) hash of the system
(``$6$``, ``$y$``, ``$2b$``, ...). Make one with::

  python3 -m qpsmtpd.auth hash        # asks for the password

and store it::

  INSERT INTO users (address, password_hash) VALUES
      ('alice@example.org', '$pbkdf2-sha256$600000$...');

Argument: ``db`` — the database file (default ``auth.sqlite``); a relative
name is looked up in the configuration directories like a config file. The
database is opened read-only for each attempt, so changes apply at once.

Results (replies: see ``qpsmtpd.auth``):

* the user is not a full address, or not in the table: DECLINED (``535``
  when no other auth plugin knows the user);
* ``active`` is 0: DENY ``auth_sqlite - account disabled``;
* the password matches: OK ``auth_sqlite``; it does not: DENY
  ``auth_sqlite - wrong password``;
* CRAM-MD5 for an account without ``password_clear``: DECLINED;
* the database cannot be read: DENYSOFT ``auth_sqlite - temporary
  failure`` (``454``), with the reason in the log.

Example ``config/plugins`` line::

  auth/auth_sqlite db /var/lib/qpsmtpd/users.sqlite
"""

import os
import sqlite3
import urllib.parse

from qpsmtpd.auth import validate_password
from qpsmtpd.constants import DECLINED, DENY, DENYSOFT
from qpsmtpd.plugin import Plugin

QUERY = ("SELECT password_hash, password_clear, active FROM users "
         "WHERE address = ? COLLATE NOCASE")


class AuthSqlite(Plugin):
    def register(self, *args):
        self.args = self.parse_args(args, defaults={"db": "auth.sqlite"})

    def database(self):
        path = self.args["db"]
        return path if os.path.isabs(path) else self.app.config.path(path)

    def hook_auth_plain(self, session, mechanism, user, password, digest, ticket):
        if "@" not in user:
            self.log_skip(f"not a full address: {user}")
            return DECLINED
        path = self.database()
        try:
            connection = sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=ro",
                                         uri=True, timeout=5)
            try:
                row = connection.execute(QUERY, (user,)).fetchone()
            finally:
                connection.close()
        except sqlite3.Error as exc:
            self.log_error(f"cannot read {path}: {exc}")
            return DENYSOFT, "auth_sqlite - temporary failure"
        if row is None:
            self.log_skip(f"no such user: {user}")
            return DECLINED
        password_hash, password_clear, active = row
        if not active:
            self.log_fail(f"account disabled: {user}")
            return DENY, "auth_sqlite - account disabled"
        return validate_password(self, src_clear=password_clear, src_crypt=password_hash,
                                 attempt_clear=password, attempt_hash=digest,
                                 method=mechanism, ticket=ticket)

    hook_auth_login = hook_auth_plain
    hook_auth_cram_md5 = hook_auth_plain
