"""auth/auth_ldap_bind - SMTP AUTH by binding to an LDAP directory as the
user.

Offers PLAIN and LOGIN. For each attempt: search the directory (anonymously)
below ``ldap_base`` for the entry whose ``ldap_auth_filter_attr`` equals the
user name's local part (``alice`` for ``Alice@example.org``, lower case),
then bind as that entry's DN with the password the client gave. The
directory decides; no password is read.

Settings, from ``config/ldap`` (lines ``key value``) and overridden by
``key value`` arguments:

* ``ldap_base`` (required; without it the plugin stays inactive and says so)
* ``ldap_host`` (default ``127.0.0.1``; an ``ldaps://host`` URL also works)
* ``ldap_port`` (default 389)
* ``ldap_timeout`` (seconds, default 5)
* ``ldap_auth_filter_attr`` (default ``uid``)

Results (replies: see ``qpsmtpd.auth``):

* the bind succeeds: OK ``authldap/<mech>`` (``235 ... - authldap/plain``);
* no such entry, the bind is refused: DECLINED ``authldap/<mech> - wrong
  username or password`` (the next auth plugin may try; with none, 535);
* the directory cannot be reached, or the search fails: DENYSOFT
  ``authldap/<mech> - temporary auth error`` (``454``; the original declined,
  so users saw "wrong password" while the directory was down).

Fixed on purpose: the user name is escaped in the search filter (the
original put it in as typed, so ``*`` matched any entry), an empty password
never reaches the directory (a bind with an empty password is an anonymous
bind, which succeeds), and a name matching several entries is refused.

Needs the Python package ldap3; without it the plugin stays inactive and
logs why. Log lines: ``pass, <user> bound as <dn>``, ``fail, ...``,
``error, ...``.

Example ``config/plugins`` line::

  auth/auth_ldap_bind ldap_base dc=example,dc=org ldap_host ldap.example.org
"""

import math
import warnings

from qpsmtpd.constants import DECLINED, DENYSOFT, LOGERROR, OK
from qpsmtpd.plugin import Plugin, PluginError

try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # ldap3 vs new pyasn1
        import ldap3
        from ldap3.core.exceptions import LDAPException
        from ldap3.utils.conv import escape_filter_chars
except ImportError:  # the plugin says so in register
    ldap3 = None

DEFAULTS = {"ldap_host": "127.0.0.1", "ldap_port": "389", "ldap_timeout": "5",
            "ldap_auth_filter_attr": "uid"}
INVALID_CREDENTIALS = 49


class AuthLdapBind(Plugin):
    def register(self, *args):
        settings = dict(DEFAULTS)
        for line in self.config_list("ldap"):
            key, _, value = line.partition(" ")
            if value.strip():
                settings[key.strip()] = value.strip()
        self.args = settings = self.parse_args(args, defaults=settings)
        if ldap3 is None:
            self.log(LOGERROR, "the Python package ldap3 is not installed; "
                               "plugin inactive")
            return False
        if not settings.get("ldap_base"):
            self.log(LOGERROR, "please configure ldap_base; plugin inactive")
            return False
        try:
            self.port = int(settings["ldap_port"])
            # ldap3 wants whole seconds for the receive timeout
            self.timeout = max(1, math.ceil(float(settings["ldap_timeout"])))
        except ValueError:
            raise PluginError("auth_ldap_bind: ldap_port and ldap_timeout must be "
                              "numbers") from None
        self.host = settings["ldap_host"]
        self.base = settings["ldap_base"]
        self.attribute = settings["ldap_auth_filter_attr"]

    def hook_auth_plain(self, session, mechanism, user, password, digest, ticket):
        name = user.lower().split("@", 1)[0]
        wrong = (DECLINED, f"authldap/{mechanism} - wrong username or password")
        temporary = (DENYSOFT, f"authldap/{mechanism} - temporary auth error")
        if not name or not password:
            self.log_fail("empty user name or password")
            return wrong
        server = ldap3.Server(self.host, port=self.port, get_info=ldap3.NONE,
                              connect_timeout=self.timeout)
        try:
            dn = self.find_dn(server, name)
        except LookupError as exc:
            self.log_error(str(exc))
            return temporary
        except LDAPException as exc:
            self.log_error(f"search for {name} failed: {exc}")
            return temporary
        if dn is None:
            self.log_fail(f"user not found: {name}")
            return wrong
        try:
            bound, code = self.bind(server, dn, password)
        except LDAPException as exc:
            self.log_error(f"bind as {dn} failed: {exc}")
            return temporary
        if bound:
            self.log_pass(f"{user} bound as {dn}")
            return OK, f"authldap/{mechanism}"
        if code != INVALID_CREDENTIALS:
            self.log_error(f"bind as {dn} refused with result {code}")
        else:
            self.log_fail(f"wrong password for {dn}")
        return wrong

    hook_auth_login = hook_auth_plain

    def find_dn(self, server, name):
        """The DN of the one entry matching ``name``, or None."""
        connection = ldap3.Connection(server, receive_timeout=self.timeout,
                                      raise_exceptions=False, read_only=True)
        try:
            connection.open()
            connection.search(self.base, f"({self.attribute}={escape_filter_chars(name)})",
                              search_scope=ldap3.SUBTREE, attributes=[],
                              size_limit=2, time_limit=self.timeout)
            entries = [r["dn"] for r in connection.response or ()
                       if r.get("type") == "searchResEntry"]
            code = connection.result.get("result")
        finally:
            connection.unbind()
        if len(entries) > 1:
            raise LookupError(f"{name} matches several entries below {self.base}")
        if code not in (0, 32) and not entries:   # 32: noSuchObject
            raise LookupError(f"search for {name} failed with result {code} "
                              f"({connection.result.get('description')})")
        return entries[0] if entries else None

    def bind(self, server, dn, password):
        connection = ldap3.Connection(server, user=dn, password=password,
                                      receive_timeout=self.timeout,
                                      raise_exceptions=False)
        try:
            bound = connection.bind()
            return bound, connection.result.get("result")
        finally:
            connection.unbind()
