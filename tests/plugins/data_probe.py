"""Test plugin: record what the DATA hooks show a plugin, and change it.

At ``data_headers_end``, ``data_post_headers`` and ``data_post`` it appends
a record to the connection note ``data_probe`` (a list)::

    {"plugin": <name>, "hook": <hook>, "header_type": <class name>,
     "fields": [[name, raw value], ...],
     "body": <bytes read from body_fh()>, "body_start_pos": <tell() at open>,
     "second_read": <bytes of a second, independent body_fh()>,
     "data_size": ..., "body_length": ...,
     "notes": <copy of the transaction notes>}

Arguments (``key value`` pairs, each may be repeated through ``:N``
instances):

  add HOOK      add ``X-<plugin name>: <hook>`` at the top of the header in
                HOOK;
  append HOOK   the same at the end of the header.
"""

from qpsmtpd.constants import DECLINED
from qpsmtpd.plugin import Plugin

DATA_HOOKS = ("data_headers_end", "data_post_headers", "data_post")


class DataProbe(Plugin):
    def register(self, *args):
        self.args = self.parse_args(args)
        for hook in DATA_HOOKS:
            self.register_hook(hook, self._probe(hook))

    def _probe(self, hook):
        def probe(session):
            transaction = session.transaction
            header = transaction.header
            with transaction.body_fh() as first, transaction.body_fh() as second:
                start = first.tell()
                body = first.read()
                second_read = second.read()
            session.connection.notes.setdefault("data_probe", []).append({
                "plugin": self.name, "hook": hook,
                "header_type": type(header).__name__,
                "fields": [list(f) for f in header.fields] if header is not None else None,
                "body": body, "body_start_pos": start, "second_read": second_read,
                "data_size": transaction.data_size,
                "body_length": transaction.body_length,
                "notes": dict(transaction.notes),
            })
            field = "X-" + self.name.replace("_", "-")
            if self.args.get("add") == hook:
                header.add(field, hook, 0)
            if self.args.get("append") == hook:
                header.add(field, hook)
            return DECLINED
        return probe
