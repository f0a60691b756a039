"""A message's header block, kept byte for byte.

``Header`` is the Mail::Header-like object plugins see as
``transaction.header``: an ordered list of fields, each kept as its name
and its raw value (everything after the colon, folding included), so a
header that no plugin touched is written out exactly as it arrived. Text is
``str`` decoded from the wire as UTF-8 with ``surrogateescape``, so 8-bit
bytes survive the round trip.

* ``get(name)`` / ``get_all(name)`` return values without the leading space
  and with folding kept; ``count(name)``;
* ``add(name, value, index=None)`` — ``index=0`` puts the field at the very
  top (how Received is prepended), ``None`` at the end;
* ``delete(name)``, ``replace(name, value)``, ``rename(old, new)``;
* ``as_string()`` — the block with LF line endings, no separator line.
"""

import re

_FIELD = re.compile(r"([^\x00-\x20\x7f:]+):(.*)\Z", re.S)


class Header:
    """An ordered, mutable list of header fields."""

    def __init__(self):
        self._fields = []  # [name, raw_value]; raw_value keeps folding
        self._folds = []   # continuation lines of the last field, not yet joined

    @property
    def fields(self):
        """The ``[name, raw_value]`` list (joining pending folded lines)."""
        if self._folds:
            self._fields[-1][1] += "".join(self._folds)
            self._folds = []
        return self._fields

    @fields.setter
    def fields(self, value):
        self._folds = []
        self._fields = value

    @classmethod
    def parse(cls, text):
        """Parse a block of header lines (str, LF endings); stops at the first
        line that is neither a field nor a continuation."""
        header = cls()
        for line in text.split("\n"):
            if not line or not header.feed(line):
                break
        return header

    def feed(self, line):
        """Add one line (without its newline). Returns False when the line
        is not part of a header block, so the caller treats it as body."""
        if line[:1] in (" ", "\t"):
            if not self._fields:
                return False
            # joined later: += on a growing field would be quadratic
            self._folds.append("\n" + line)
            return True
        match = _FIELD.match(line)
        if match is None:
            return False
        self.fields.append([match.group(1), match.group(2)])
        return True

    # -- reading --------------------------------------------------------------

    def get(self, name, index=0):
        """The ``index``-th value of ``name`` (case-insensitive) or None."""
        values = self.get_all(name)
        if index < len(values):
            return values[index]
        return None

    def get_all(self, name):
        lower = name.lower()
        return [_clean(raw) for field, raw in self.fields if field.lower() == lower]

    def count(self, name):
        lower = name.lower()
        return sum(1 for field, _ in self.fields if field.lower() == lower)

    def names(self):
        return [field for field, _ in self.fields]

    def __contains__(self, name):
        return self.count(name) > 0

    def __len__(self):
        return len(self.fields)

    # -- changing ---------------------------------------------------------------

    def add(self, name, value, index=None):
        """Add ``name: value``; ``index=0`` is the top, ``None`` the end.

        ``value`` may hold ``\\n`` followed by whitespace for folding.
        """
        field = [name, " " + value.rstrip("\n")]
        if index is None:
            self.fields.append(field)
        else:
            self.fields.insert(index, field)

    def delete(self, name, index=None):
        """Remove every ``name`` field, or only its ``index``-th one."""
        lower = name.lower()
        seen = -1
        kept = []
        for field in self.fields:
            if field[0].lower() == lower:
                seen += 1
                if index is None or seen == index:
                    continue
            kept.append(field)
        self.fields = kept

    def replace(self, name, value, index=0):
        """Replace the ``index``-th ``name`` field in place, or add it."""
        lower = name.lower()
        seen = -1
        for field in self.fields:
            if field[0].lower() == lower:
                seen += 1
                if seen == index:
                    field[1] = " " + value.rstrip("\n")
                    return
        self.add(name, value)

    def rename(self, old, new):
        lower = old.lower()
        for field in self.fields:
            if field[0].lower() == lower:
                field[0] = new

    # -- writing ------------------------------------------------------------------

    def as_string(self):
        return "".join(f"{name}:{raw}\n" for name, raw in self.fields)

    def as_bytes(self):
        return self.as_string().encode("utf-8", "surrogateescape")

    def __repr__(self):
        return f"<Header {self.names()!r}>"


def _clean(raw):
    return raw[1:] if raw[:1] in (" ", "\t") else raw
