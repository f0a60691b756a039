"""auth/authdeny - the last word in a chain of auth plugins: nobody else
knew the user, so the attempt fails.

It hooks the generic ``auth`` hook, which runs only after every
``auth-<mechanism>`` plugin declined. It always declines, with the message
``<user> is not free to abuse my relay``, so the client gets
``535 <MECH> authentication failed for <user> from <ip> - <user> is not free
to abuse my relay``. Because it hooks the generic hook, EHLO advertises every
mechanism (``AUTH PLAIN LOGIN CRAM-MD5``), as in qpsmtpd.

No arguments. Log line: ``fail, <user> is not free to abuse my relay``.

Example ``config/plugins`` lines (list it after the real auth plugins)::

  auth/auth_flat_file
  auth/authdeny
"""

from qpsmtpd.constants import DECLINED
from qpsmtpd.plugin import Plugin


class AuthDeny(Plugin):
    def hook_auth(self, session, mechanism, user, password, digest, ticket):
        message = f"{user} is not free to abuse my relay"
        self.log_fail(message)
        return DECLINED, message
