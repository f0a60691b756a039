#!/usr/bin/env python3
"""Fuzz target: a whole SMTP session fed arbitrary client bytes.

Input: byte 0 sets how many bytes the server reads at a time (0: 64 KiB,
else 1-255), byte 1 shrinks the command line limit to 16 + that many bytes
(0: the real 4096) and the DATA piece limit alike, so over-long lines are
reachable with short inputs; the rest is what the client sends after the
greeting, followed by end of input. The plugins are the sample chain's
rcpt side (``count_unrecognized_commands 4``, ``relay``,
``dont_require_anglebrackets``, ``rcpt_ok``) and ``capture`` as queue.

Invariants: ``SMTP.run()`` returns (no exception escapes); the log shows
no traceback; everything the server writes is well-formed replies, the
first a 220; nothing follows a 221, 421 or 521; there are no more
replies than the greeting, one per line sent and one for a DATA cut off.

Run through ``fuzz/run.py``, or alone:
``python3 fuzz/session.py fuzz/corpus/session -max_total_time=30``.
"""

import sys

import atheris

import paths  # noqa: F401

with atheris.instrument_imports(include=["qpsmtpd"]):
    import qpsmtpd.address  # noqa: F401
    import qpsmtpd.command  # noqa: F401
    import qpsmtpd.header  # noqa: F401
    import qpsmtpd.lineio  # noqa: F401
    import qpsmtpd.smtp  # noqa: F401
    import qpsmtpd.transaction  # noqa: F401

import common  # noqa: E402

APP = common.site("session", ["count_unrecognized_commands 4", "relay",
                              "dont_require_anglebrackets", "rcpt_ok",
                              "capture {queue}"],
                  {"rcpthosts": ["example.org"], "databytes": "5000"})


def check(data):
    if len(data) < 2:
        return
    common.clear_queue(APP)
    limit = 16 + data[1] if data[1] else None
    stream = data[2:]
    raw = common.serve(APP, stream, recv_size=data[0] or None,
                       command_limit=limit, piece_limit=limit)
    answers = common.replies(raw)
    assert answers and answers[0][0] == 220, answers[:1]
    common.check_close(answers)
    assert len(answers) <= 2 + stream.count(b"\n"), (len(answers), stream.count(b"\n"))
    common.check_log(APP)


if __name__ == "__main__":
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()
