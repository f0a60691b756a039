"""qpsmtpd for Python: an extensible SMTP daemon compatible with qpsmtpd.

The engine lives in this package; policy lives in ``plugins/``. See
docs/ARCHITECTURE.md for the map of modules.
"""

__version__ = "0.1.0"
