#!/usr/bin/env python3
"""Fuzz target: ``qpsmtpd.command.parse_path`` (the MAIL/RCPT arguments).

Input: one byte choosing the keyword (even: ``from``, odd: ``to``), then
the argument text as the server would decode it (UTF-8 with
``surrogateescape``). Invariants: the parser returns ``(path, params)`` or
raises ``CommandSyntaxError`` with one of its three 501 texts; a returned
path is non-empty without trailing white space; parameter names are lower
case ``[a-z0-9][a-z0-9-]*``; values are None or non-empty, without ``=``,
white space or control characters.

Run through ``fuzz/run.py``, or alone:
``python3 fuzz/parse_path.py fuzz/corpus/parse_path -max_total_time=30``.
"""

import re
import sys

import atheris

import paths  # noqa: F401

with atheris.instrument_imports(include=["qpsmtpd"]):
    from qpsmtpd.command import CommandSyntaxError, parse_path

ERRORS = {"Syntax error in command", "Syntax error in parameters",
          "Syntax error in address"}
KEYWORD = re.compile(r"[a-z0-9][a-z0-9-]*\Z")


def check(data):
    if not data:
        return
    keyword = "to" if data[0] & 1 else "from"
    rest = data[1:].decode("utf-8", "surrogateescape")
    try:
        path, params = parse_path(keyword, rest)
    except CommandSyntaxError as exc:
        assert str(exc) in ERRORS, str(exc)
        return
    assert isinstance(path, str) and path and path == path.rstrip(), repr(path)
    for key, value in params.items():
        assert KEYWORD.match(key), repr(key)
        if value is not None:
            assert value and "=" not in value, repr(value)
            assert not any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127
                           for ch in value), repr(value)


if __name__ == "__main__":
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()
