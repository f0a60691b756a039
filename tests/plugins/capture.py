"""Test plugin: queue each message into a directory, for byte-exact checks.

Argument: the directory. Each message becomes ``<n>.eml`` (the queued bytes)
and ``<n>.env`` (``sender`` then one recipient per line, each as
``format()`` gives it; 8-bit bytes written back as they came). Returns
``OK Queued! <n>``. Also records the spool file path of the transaction in
``<n>.spool`` so tests can check it is removed afterwards.
"""

import os

from qpsmtpd.constants import OK
from qpsmtpd.plugin import Plugin


class Capture(Plugin):
    def register(self, directory):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)

    def hook_queue(self, session):
        transaction = session.transaction
        number = len([n for n in os.listdir(self.directory) if n.endswith(".eml")])
        base = os.path.join(self.directory, str(number))
        with open(base + ".eml", "wb") as out:
            for chunk in transaction.message_chunks():
                out.write(chunk)
        # Addresses may hold 8-bit bytes (surrogate-escaped), as on the wire.
        with open(base + ".env", "w", encoding="utf-8", errors="surrogateescape") as out:
            out.write(transaction.sender.format() + "\n")
            for recipient in transaction.recipients:
                out.write(recipient.format() + "\n")
        with open(base + ".spool", "w") as out:
            out.write(transaction.spool.path or "" if transaction.spool else "")
        return OK, f"Queued! {number}"
