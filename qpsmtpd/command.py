"""Parsing the arguments of MAIL and RCPT (qpsmtpd's ``Qpsmtpd::Command``).

``parse_path(keyword, rest)`` takes the text after the verb (``FROM:<a@b>
SIZE=10``) and returns ``(path, params)``: the path text as the client wrote
it (with or without angle brackets; ``<>`` for an empty MAIL path) and a
dict of ESMTP parameters with lower-cased keys (``None`` for a parameter
without ``=value``). Errors raise ``CommandSyntaxError`` whose text is the
501 reply.

Rules (§3.5 of the reference): the keyword and colon are required
(case-insensitive, spaces after the colon are skipped); parameters are
peeled off the end (``keyword[=value]``, keyword = letter/digit then
letters, digits, hyphens); a remaining path with ``@`` followed later by
whitespace is an error; nothing left is the null sender for MAIL and an
error for RCPT.
"""

import functools
import re

_PARAMETER = re.compile(r"\s+([A-Za-z0-9][A-Za-z0-9-]*(?:=[^=\s\x00-\x1f\x7f]+)?)\Z")
_AT_THEN_SPACE = re.compile(r"@.*\s")


@functools.lru_cache(maxsize=8)
def _keyword(keyword):
    return re.compile(re.escape(keyword) + r":\s*", re.IGNORECASE)


# Compiled at import, so forked workers inherit them.
_keyword("from")
_keyword("to")


class CommandSyntaxError(ValueError):
    """The arguments cannot be parsed; ``str(exc)`` is the reply text."""


def parse_path(keyword, rest):
    """Split ``FROM:<path> params`` / ``TO:<path> params``."""
    match = _keyword(keyword).match(rest)
    if match is None:
        raise CommandSyntaxError("Syntax error in command")
    text = rest[match.end():].rstrip()
    peeled = []
    while True:
        parameter = _PARAMETER.search(text)
        if parameter is None:
            break
        peeled.append(parameter.group(1))
        text = text[:parameter.start()]
    if text:
        if _AT_THEN_SPACE.search(text):
            raise CommandSyntaxError("Syntax error in parameters")
    elif keyword.lower() == "from":
        text = "<>"
    else:
        raise CommandSyntaxError("Syntax error in address")
    params = {}
    for parameter in reversed(peeled):
        key, sep, value = parameter.partition("=")
        params[key.lower()] = value if sep else None
    return text, params
