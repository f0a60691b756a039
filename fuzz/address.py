#!/usr/bin/env python3
"""Fuzz target: ``qpsmtpd.address`` (``canonify``, ``Address.parse``,
``format``).

Input: the text of a path as the server would decode it (UTF-8 with
``surrogateescape``); it is tried as given and inside angle brackets.
Invariants: nothing raises; ``canonify`` returns a reason from its
documented set, with user and host both None on failure; a parsed address
formats as ``<...>``, and - where the reference's format rules allow it (a
domain, and a local part that is ASCII, not empty, without NUL, CR or LF,
not starting with a dot) - that text parses back to the same address.

Run through ``fuzz/run.py``, or alone:
``python3 fuzz/address.py fuzz/corpus/address -max_total_time=30``.
"""

import sys

import atheris

import paths  # noqa: F401

with atheris.instrument_imports(include=["qpsmtpd"]):
    from qpsmtpd.address import Address, canonify

REASONS_OK = {"empty path", "bare postmaster", "local matches atom", "quoted string"}
REASONS_FAIL = {"missing delimiters", "no valid domain", "fall through"}


def round_trips(address):
    user = address.user
    if address.host is None:
        return True
    return (user != "" and user.isascii() and not user.startswith(".")
            and not any(ch in user for ch in "\x00\r\n"))


def check_one(text):
    user, host, reason = canonify(text)
    if user is None:
        assert host is None and reason in REASONS_FAIL, (text, host, reason)
    else:
        assert reason in REASONS_OK, (text, reason)
    parsed = Address.parse(text)
    if parsed is None:
        return
    formatted = parsed.format()
    assert formatted.startswith("<") and formatted.endswith(">"), formatted
    parsed.address(), parsed.canonical_key(), hash(parsed), parsed.is_null()
    if len(text) >= 2 and text[0] == "<" and text[-1] == ">" and round_trips(parsed):
        again = Address.parse(formatted)
        assert again is not None, (text, formatted)
        assert (again.user, again.host) == (parsed.user, parsed.host), (text, formatted)
        assert again == parsed


def check(data):
    text = data.decode("utf-8", "surrogateescape")
    check_one(text)
    check_one(f"<{text}>")


if __name__ == "__main__":
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()
