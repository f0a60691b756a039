"""Test plugin: add Authentication-Results parts at connect and at MAIL.

At connect: ``iprev=pass``. At MAIL: ``spf=pass smtp.mailfrom=<sender host>``.
"""

from qpsmtpd.plugin import Plugin


class AuthRes(Plugin):
    def hook_connect(self, session):
        self.store_auth_results(session, "iprev=pass")

    def hook_mail(self, session, sender, params):
        self.store_auth_results(session, f"spf=pass smtp.mailfrom={sender.host}")
