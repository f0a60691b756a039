"""RFC 5321 mailboxes as qpsmtpd parses, formats and compares them.

Contract (qpsmtpd's ``Qpsmtpd::Address``, reference §4):

* ``Address(user=None, host=None)`` stores both parts verbatim, unchecked.
  ``user`` and ``host`` are plain attributes; ``notes`` is a per-address dict.
* ``Address.parse(text)`` is qpsmtpd's one-argument constructor:

  - ``None`` gives an empty address (user and host None, formats as ``<>``);
  - ``"<...>"`` is checked by :func:`canonify`; a path it rejects gives None;
  - any other text is split at its last ``@`` without validation; text
    without ``@`` gives an empty address (``parse("postmaster")`` is ``<>``).

* ``address()`` is ``user@host`` (or ``user``, or ``""``) with no quoting;
  ``format()`` and ``str()`` give the bracketed, quoted form a client sees.
* Addresses compare and sort by :meth:`Address.canonical_key` (domain first,
  then local part); a plain ``str`` on either side is first run through
  :meth:`Address.parse`. ``hash()`` agrees with ``==`` between addresses.
* ``canonify(path)`` returns ``(user, host, reason)``; ``user`` is None when
  the path is rejected.

The text handed in is a ``str`` decoded from the wire as UTF-8 with
``surrogateescape``; nothing here encodes or decodes.

The six pattern strings below are public so that a plugin can tighten or
loosen the grammar at run time (an empty ``address_literal_expr`` forbids
``[1.2.3.4]`` domains; a ``domain_expr`` replaces the whole domain pattern,
literals included). They are read again on every parse and compiled with
``re.ASCII``, so ``\\d`` and ``\\w`` mean ASCII only, as they did for the
byte strings of the original. Two details matter to a plugin that overrides
them: each domain label is matched as an atomic group (longest match, never
backtracked into), and the domain is whatever follows the last ``@``.

Quirks kept on purpose, because the original behaves this way and senders
have come to depend on it:

* Domain labels are separated by *any* single character, not only ``.``
  (``user@exa_mple.com`` passes; a trailing dot still fails).
* A local part only has to *start* with atom characters (``foo bar``,
  ``foo..bar``, ``a@b``, ``postmáster`` pass).
* No 0-255 range check inside ``[a.b.c.d]`` literals.
* The only bare local part accepted is ``postmaster``, lower-cased.
"""

from __future__ import annotations

import collections
import functools
import re

# Letters, digits and the RFC 5321 atext specials.
atom_expr = r"[a-zA-Z0-9!#%&*+=?^_`{|}~$'/-]+"

# [a.b.c.d] with 1-3 digits per group (no range check), or [IPv6:...].
address_literal_expr = (
    r"(?:\[(?:[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}"
    r"|IPv6:[0-9A-Fa-f:.]+)\])"
)

# One domain label: letter/digit, optionally hyphens inside, letter/digit last.
subdomain_expr = r"(?:[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?)"

# None or "" means: labels built from subdomain_expr, or an address literal.
domain_expr: str | None = None

# Quoted-string content: ASCII 1-8, 11, 12, 14-31, 127 and printable
# ASCII except space, '"' and '\'.
qtext_expr = r"[\x01-\x08\x0b\x0c\x0e-\x1f\x21\x23-\x5b\x5d-\x7f]"

# What may follow a backslash in a quoted string: ASCII except NUL, LF, CR.
text_expr = r"[\x01-\x09\x0b\x0c\x0e-\x7f]"


# The compiled patterns (plain namedtuple: no ``typing`` at start-up).
_Grammar = collections.namedtuple(
    "_Grammar", ("source_route", "domain", "atom", "quoted", "quoted_pair"))


# No DOTALL: a path with a newline in it is not a path ("missing delimiters").
_DELIMITED = re.compile(r"<(.*)>")
_BARE_POSTMASTER = re.compile(r"postmaster", re.IGNORECASE | re.ASCII)
# Anything format() must backslash-escape: all but ASCII letters, digits
# and atext specials plus '.', so non-ASCII characters are escaped too.
_NEEDS_QUOTING = re.compile(r"[^a-zA-Z0-9!#$%&'*+/=?^_`{|}~.-]")
_KEY_DROPPED = str.maketrans("", "", "<>[]")


@functools.lru_cache(maxsize=16)
def _compile(atom, literal, subdomain, domain, qtext, text):
    if domain:
        any_domain = f"(?:{domain})"
    else:
        # The label is an atomic group: the separator below matches letters
        # and digits too, so a backtracking label would let a long run like
        # "aaaa...a." take exponential time to fail. With the default label
        # pattern, taking the longest label and never giving part of it back
        # accepts exactly the same domains.
        label = f"(?>{subdomain})"
        # The bare "." is the compatibility quirk: any one character
        # separates labels, as in the original, whose "\." was lost to Perl
        # string interpolation.
        any_domain = f"(?:{label}(?:.{label})*)"
        if literal:
            any_domain = f"(?:(?:{literal})|{any_domain})"
    flags = re.ASCII
    return _Grammar(
        source_route=re.compile(f"@{any_domain}(?:,@{any_domain})*:", flags),
        domain=re.compile(any_domain, flags),
        atom=re.compile(f"(?:{atom})", flags),
        quoted=re.compile(f'"((?:(?:{qtext})|\\\\(?:{text}))*)"', flags),
        quoted_pair=re.compile(f"\\\\({text})", flags),
    )


def _grammar():
    # Looked up on every call so that a plugin's override takes effect at
    # once; the cache keeps recompilation away while nothing changes.
    return _compile(atom_expr, address_literal_expr, subdomain_expr,
                    domain_expr, qtext_expr, text_expr)


# Compiled at first use, not at import: the per-connection program
# reaches its banner without them. A daemon compiles them in its parent
# before forking (``qpsmtpd.app.warm_imports()``), so a forked worker
# inherits the patterns instead of compiling them for every connection.


def canonify(path):
    """Split an angle-bracketed RFC 5321 path into local part and domain.

    Args:
        path: the text including ``<`` and ``>``, e.g. ``"<foo@example.com>"``.

    Returns:
        ``(user, host, reason)``. On success ``user`` is a str (``""`` for
        the null path ``<>``) and ``host`` a str or None (``<>`` and bare
        ``<postmaster>``); the reason is ``"empty path"``,
        ``"bare postmaster"``, ``"local matches atom"`` or
        ``"quoted string"``. On failure ``user`` and ``host`` are None and
        the reason is ``"missing delimiters"``, ``"no valid domain"`` or
        ``"fall through"``.

    A leading source route (``@a,@b:``) is dropped. Quoted local parts are
    unquoted and their backslash escapes undone. Raises TypeError if
    ``path`` is not a str.
    """
    delimited = _DELIMITED.fullmatch(path)
    if delimited is None:
        return None, None, "missing delimiters"
    path = delimited.group(1)
    grammar = _grammar()

    route = grammar.source_route.match(path)
    if route is not None:
        path = path[route.end():]

    if path == "":
        return "", None, "empty path"
    if _BARE_POSTMASTER.fullmatch(path):
        return "postmaster", None, "bare postmaster"

    # The reference splits at the last '@' whose right side is a domain.
    # Only the very last '@' needs trying: a default domain can hold an '@'
    # only between two labels, and then the part after that '@' is itself a
    # domain, so an earlier split never succeeds where the last one failed.
    # Trying every '@' would cost quadratic time on paths full of them.
    at = path.rfind("@")
    if at < 0 or grammar.domain.fullmatch(path[at + 1:]) is None:
        return None, None, "no valid domain"
    local, host = path[:at], path[at + 1:]

    if grammar.atom.match(local):
        return local, host, "local matches atom"
    quoted = grammar.quoted.fullmatch(local)
    if quoted is not None:
        user = grammar.quoted_pair.sub(lambda pair: pair.group(1), quoted.group(1))
        return user, host, "quoted string"
    return None, None, "fall through"


def _is_bracketed(text):
    # Unlike the original's /^<(.*)>$/, an embedded newline does not send
    # the text down the unchecked path; canonify() then rejects it.
    return len(text) >= 2 and text.startswith("<") and text.endswith(">")


@functools.total_ordering
class Address:
    """An RFC 5321 mailbox as qpsmtpd sees it.

    ``user`` is the local part, ``host`` the domain; either may be None.
    The constructor stores both verbatim; use :meth:`parse` for client text.
    Instances are mutable: do not change ``user`` or ``host`` while the
    address is a key in a dict or a member of a set.
    """

    def __init__(self, user=None, host=None):
        """Store ``user`` and ``host`` as given, without any validation."""
        self.user = user
        self.host = host
        self.notes = {}

    @classmethod
    def parse(cls, text):
        """Build an Address from text the way qpsmtpd's ``new(text)`` does.

        Returns an empty Address for None; for ``"<...>"`` the parsed
        Address, or None if :func:`canonify` rejects it; for anything else an
        Address split at the last ``@`` with no validation at all (empty if
        there is no ``@``).
        """
        if text is None:
            return cls()
        if _is_bracketed(text):
            user, host, _reason = canonify(text)
            if user is None:
                return None
            return cls(user, host)
        user, at, host = text.rpartition("@")
        if not at:
            return cls()
        return cls(user, host)

    def address(self):
        """Return ``user@host``, ``user`` or ``""``: no quotes, no brackets."""
        user = "" if self.user is None else self.user
        at_host = "" if self.host is None else "@" + self.host
        return user + at_host

    def set_address(self, text):
        """Replace user and host with those parsed from ``text``.

        Angle brackets are added when ``text`` lacks them, then the path goes
        through :func:`canonify`; a rejected path leaves user and host None.
        Returns the new :meth:`address`.
        """
        if not _is_bracketed(text):
            text = f"<{text}>"
        self.user, self.host, _reason = canonify(text)
        return self.address()

    def format(self):
        """Return the address as sent in SMTP: ``<user@host>``.

        ``<>`` when user is None (or empty without a host). A user holding
        any character other than ASCII letters, digits, atext specials and
        ``.`` has each such character backslash-escaped and is put in double
        quotes: ``<"foo\\ bar"@example.com>``.
        """
        if self.user is None:
            return "<>"
        at_host = "" if self.host is None else "@" + self.host
        escaped = _NEEDS_QUOTING.sub(lambda char: "\\" + char.group(), self.user)
        if escaped != self.user:
            return f'<"{escaped}"{at_host}>'
        return f"<{self.user}{at_host}>"

    __str__ = format

    def is_null(self):
        """True for the null sender ``<>``: user None or ``""``, host None."""
        return not self.user and self.host is None

    def canonical_key(self):
        """Return the string addresses are compared and sorted by.

        :meth:`format` split on ``@``, the pieces reversed and joined with
        ``=``, then every ``<``, ``>``, ``[`` and ``]`` deleted: so
        ``<foo@example.com>`` gives ``example.com=foo``.
        """
        pieces = self.format().split("@")
        return "=".join(reversed(pieces)).translate(_KEY_DROPPED)

    def _coerce(self, other):
        if isinstance(other, Address):
            return other
        if isinstance(other, str):
            return type(self).parse(other)
        return None

    def __eq__(self, other):
        other = self._coerce(other)
        if other is None:
            return NotImplemented
        return self.canonical_key() == other.canonical_key()

    def __lt__(self, other):
        other = self._coerce(other)
        if other is None:
            return NotImplemented
        return self.canonical_key() < other.canonical_key()

    def __hash__(self):
        return hash(self.canonical_key())

    def __repr__(self):
        return f"{type(self).__name__}(user={self.user!r}, host={self.host!r})"
