"""http_config - read configuration values from web servers.

Answers the ``config`` hook, which the engine asks before reading a file
of ``config/`` (for every name except ``logging``, ``loglevel``,
``plugin_dirs`` and ``plugins``, which are read before plugins exist).
The plugin's arguments are base URLs; for the configuration ``<name>`` it
requests ``<url><name>`` from each in turn. The first answer with status
200 that holds at least one value wins; its lines are filtered like a
config file (``#`` comment lines and blank lines dropped, the rest trimmed;
``$include`` is not expanded). When no URL has a value the plugin declines
and the files of ``config/`` (and the built-in defaults) answer as usual.

An HTTP error status other than 5xx (404 and the like) means "not here":
the next URL is tried. A 5xx status, a refused connection, a timeout or an
answer over 1 MiB is an error: it is logged once (LOGERROR ``error, <url>:
<reason>``), that URL is skipped until the cache time has passed, and the
next URL (finally the files) answers.

Arguments (any order; every other word is a URL):

  <url> ...           base URLs, ``http://`` or ``https://``; the name is
                      appended as is, so end them with ``/`` or ``=``
  cache <seconds>     how long answers (including "no value") are kept, per
                      process; default 60, 0 disables the cache (and then a
                      server that is down costs ``timeout`` on every lookup)
  timeout <seconds>   for connecting and for each read; default 5

The original had no cache and no timeout of its own; both are additions.
With the forkserver each connection's process starts with the cache the
parent had when it forked.

Proxies from the ``http_proxy``/``https_proxy``/``no_proxy`` environment
variables are honoured (Python's urllib).

Example ``config/plugins`` line (first in the file, so the other plugins'
configuration comes from the server too)::

  http_config http://cfg.example.net/qpsmtpd/ http://cfg2.example.net/qp?config= cache 300
"""

import http.client
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from qpsmtpd.constants import DECLINED, LOGDEBUG, OK
from qpsmtpd.plugin import Plugin, PluginError

DEFAULT_CACHE = 60.0
DEFAULT_TIMEOUT = 5.0
MAX_ANSWER = 1024 * 1024
_LINE_BREAKS = re.compile(r"[\r\n]+")


class HttpConfig(Plugin):
    def register(self, *args):
        self.urls = []
        self.cache_seconds = DEFAULT_CACHE
        self.timeout = DEFAULT_TIMEOUT
        words = list(args)
        while words:
            word = words.pop(0)
            if word in ("cache", "timeout", "loglevel"):
                if not words:
                    raise PluginError(f"http_config: {word} needs a value")
                value = words.pop(0)
                if word == "loglevel":
                    self.set_loglevel(value)
                elif word == "cache":
                    self.cache_seconds = _seconds(word, value, zero_ok=True)
                else:
                    self.timeout = _seconds(word, value, zero_ok=False)
            elif word.lower().startswith(("http://", "https://")):
                self.urls.append(word)
            else:
                raise PluginError(f"http_config: {word!r} is not an http:// or "
                                  "https:// URL")
        if not self.urls:
            raise PluginError("http_config: no URL given")
        self.opener = urllib.request.build_opener()
        # Per-process caches of what the servers said: name -> (expires,
        # lines or None) and url -> time until which it is skipped.
        self._answers = {}
        self._down = {}
        self._busy = threading.local()

    def hook_config(self, session, name):
        # A logging plugin asking for its configuration while we fetch would
        # bring us back here; let the files answer that one.
        if getattr(self._busy, "active", False):
            return DECLINED
        now = time.monotonic()
        cached = self._answers.get(name)
        if cached is not None and cached[0] > now:
            lines = cached[1]
        else:
            self._busy.active = True
            try:
                lines = self.fetch(name)
            finally:
                self._busy.active = False
            if self.cache_seconds:
                self._answers[name] = (time.monotonic() + self.cache_seconds, lines)
        if lines:
            return OK, list(lines)
        return DECLINED

    def fetch(self, name):
        """The filtered lines of the first URL that has ``name``, or None."""
        self.log(LOGDEBUG, f"http_config called with {name}")
        for base in self.urls:
            if self._down.get(base, 0) > time.monotonic():
                self.log(LOGDEBUG, f"skip, {base} failed recently")
                continue
            url = base + urllib.parse.quote(name)
            try:
                body = self.get(url)
            except _NotHere as exc:
                self.log(LOGDEBUG, f"{url}: {exc}")
                continue
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self.log_error(f"{url}: {_reason(exc)}")
                if self.cache_seconds:
                    self._down[base] = time.monotonic() + self.cache_seconds
                continue
            lines = parse_lines(body)
            if lines:
                self.log(LOGDEBUG, f"{len(lines)} values for {name} from {url}")
                return tuple(lines)
            self.log(LOGDEBUG, f"{url}: no values")
        return None

    def get(self, url):
        """The body of a 200 answer; raises ``_NotHere`` for other answers
        that are not errors, OSError/HTTPException/ValueError for errors."""
        try:
            response = self.opener.open(url, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code >= 500:
                raise
            raise _NotHere(f"status {exc.code}") from None
        with response:
            if response.status != 200:
                raise _NotHere(f"status {response.status}")
            body = response.read(MAX_ANSWER + 1)
        if len(body) > MAX_ANSWER:
            raise ValueError(f"answer longer than {MAX_ANSWER} bytes")
        return body


class _NotHere(Exception):
    """The server answered, but has no value for this name."""


def parse_lines(body):
    """Config-file rules: trimmed lines, without blanks and ``#`` comments."""
    text = body.decode("utf-8", "surrogateescape")
    lines = []
    for line in _LINE_BREAKS.split(text):
        line = line.strip(" \t\f\v")
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def _seconds(word, value, zero_ok):
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if seconds < 0 or seconds != seconds or seconds == float("inf") or \
            (seconds == 0 and not zero_ok):
        raise PluginError(f"http_config: {word} must be a number of seconds"
                          f"{'' if zero_ok else ' above 0'}, not {value!r}")
    return seconds


def _reason(exc):
    if isinstance(exc, urllib.error.HTTPError):
        return f"status {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        exc = exc.reason
    if isinstance(exc, TimeoutError) or "timed out" in str(exc):
        return "timed out"
    return str(exc) or type(exc).__name__
