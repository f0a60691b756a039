#!/usr/bin/env python3
"""Fuzz target: the DATA reader, checked against an independent model.

Input: byte 0 sets how many bytes the server reads at a time (0: 64 KiB,
else 1-255); byte 1 shrinks the DATA piece limit to 8 + that many bytes
(0: the real 64 KiB), so lines longer than a piece, and CR LF pairs cut
between pieces, happen with short inputs; byte 2 picks ``databytes``
(unlimited, 40 or 2000). The rest is the DATA stream, sent after
``EHLO``, ``MAIL``, ``RCPT`` and ``DATA`` (answered 250, 250, 250, 354),
then end of input.

Invariants, from ``tests/hardening_fixtures.data_verdict``: only
<CR><LF>.<CR><LF> ends the message; then 250 and the queued message is the
stream with CR LF made LF and leading dots unstuffed (after the two trace
fields; not compared when the message holds an Authentication-Results
field, which the server renames on purpose), or 552 when it is over
``databytes``; a bare LF or CR first gives 521 and the end of the session;
the end of input first gives 451 and the end. Nothing raises and the log
shows no traceback.

Run through ``fuzz/run.py``, or alone:
``python3 fuzz/data.py fuzz/corpus/data -max_total_time=30``.
"""

import os
import re
import sys

import atheris

import paths  # noqa: F401

with atheris.instrument_imports(include=["qpsmtpd"]):
    import qpsmtpd.header  # noqa: F401
    import qpsmtpd.lineio  # noqa: F401
    import qpsmtpd.smtp  # noqa: F401
    import qpsmtpd.spool  # noqa: F401
    import qpsmtpd.transaction  # noqa: F401

import common  # noqa: E402
from hardening_fixtures import data_verdict, strip_received  # noqa: E402

PREFIX = (b"EHLO client.example.net\r\nMAIL FROM:<sender@example.net>\r\n"
          b"RCPT TO:<rcpt@example.org>\r\nDATA\r\n")
DATABYTES = (0, 40, 2000)
APPS = [common.site(f"data{size}", ["rcpt_ok", "capture {queue}"],
                    {"rcpthosts": ["example.org"], "size_threshold": "64",
                     **({"databytes": str(size)} if size else {})})
        for size in DATABYTES]
EXPECTED_CODE = {"queued": 250, "too big": 552, "bare": 521, "incomplete": 451}


def check(data):
    if len(data) < 3:
        return
    databytes = DATABYTES[data[2] % len(DATABYTES)]
    app = APPS[data[2] % len(DATABYTES)]
    common.clear_queue(app)
    stream = data[3:]
    raw = common.serve(app, PREFIX + stream, recv_size=data[0] or None,
                       piece_limit=8 + data[1] if data[1] else None)
    answers = common.replies(raw)
    codes = [code for code, _ in answers]
    assert codes[:5] == [220, 250, 250, 250, 354], codes
    verdict = data_verdict(stream, databytes)
    assert len(codes) > 5 and codes[5] == EXPECTED_CODE[verdict.outcome], (codes, verdict)
    if verdict.outcome == "queued":
        number = re.search(rb"Queued! (\d+)", answers[5][1][0])[1].decode()
        with open(os.path.join(app.queue_dir, number + ".eml"), "rb") as handle:
            queued = handle.read()
        # Incoming Authentication-Results fields are renamed on purpose.
        if b"authentication-results:" not in verdict.message.lower():
            assert strip_received(queued) == verdict.message, (queued, verdict.message)
    if verdict.outcome in ("bare", "incomplete"):
        assert len(codes) == 6, codes
    else:
        assert len(codes) - 6 <= verdict.rest.count(b"\n") + 1, codes
    common.check_close(answers)
    common.check_log(app)


if __name__ == "__main__":
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()
