"""qpsmtpd-karma: look at and edit the karma plugin's history.

Usage::

  python3 -m qpsmtpd.karma_tool [--config-dir DIR] [--store URL] COMMAND

  list                          every IP with its penalty, naughty, nice and
                                connects counts, then the totals
  search naughty|nice|both|IP   the IPs with naughty / nice / both counts,
                                or one IP
  capture IP                    put the IP in the penalty box now (one more
                                naughty connection)
  release IP                    take it out (penalty and naughty count 0)
  prune [DAYS]                  remove every entry not penalised within the
                                last DAYS days (default 7), as qpsmtpd's
                                karma_tool does: entries never penalised go
                                too
  dump [--name NAME]            every entry as ``key value`` lines
  import [--name NAME] FILE     read ``key value`` lines (``-`` for stdin)
                                into the store; keys that are IP addresses
                                in text are turned into qpsmtpd's integer
                                keys. Use it to bring over qpsmtpd's DBM
                                data, e.g. ``perl -MAnyDBM_File -MFcntl -e
                                'tie %d, "AnyDBM_File", "karma.dbm",
                                O_RDONLY, 0; print "$_ $d{$_}\\n" for keys
                                %d' | python3 -m qpsmtpd.karma_tool import -``
                                (``--name greylisting`` for greylist.dbm)

The store is the one the karma plugin uses: ``--store URL`` when given,
else the ``store``/``db_dir`` arguments of the ``karma`` line in
``config/plugins``, else ``config/store``, else ``var/db/qpsmtpd.sqlite``
under the working directory (run it where qpsmtpd runs). The first output
line says which store was used. Exit status 0, 1 for a usage error or a
store that cannot be reached.

Installed as the console script ``qpsmtpd-karma``.
"""

import argparse
import os
import sys
import time

from .config import Config
from .store import (StoreError, describe, ip_key, key_ip, now, open_store, parse_record,
                    resolve_url)

DAY = 86400


def main(argv=None, out=None):
    out = out or sys.stdout
    parser = argparse.ArgumentParser(
        prog="qpsmtpd-karma", description="Inspect and edit the karma history.")
    parser.add_argument("--config-dir", action="append", metavar="DIR",
                        help="configuration directory (repeatable)")
    parser.add_argument("--store", metavar="URL", help="sqlite:<path> or redis://host:port/db")
    parser.add_argument("--name", default="karma",
                        help="store name for dump/import (karma, greylisting)")
    parser.add_argument("command", choices=("list", "search", "capture", "release",
                                            "prune", "dump", "import"))
    parser.add_argument("argument", nargs="?")
    options = parser.parse_args(argv)
    try:
        url = options.store or url_from_config(options.config_dir)
        name = options.name if options.command in ("dump", "import") else "karma"
        store = open_store(url, name)
        print(f"using {name} store at {describe(store.url)}", file=out)
        if options.command in ("list", "search", "dump", "prune", "release") \
                and store.url.startswith("sqlite:") \
                and not os.path.exists(store.url[len("sqlite:"):]):
            print("no data yet (the file does not exist)", file=out)
            return 0
        return COMMANDS[options.command](store, options.argument, out)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


class UsageError(Exception):
    pass


def url_from_config(config_dirs):
    """The karma plugin's store URL, from config/plugins and config/store."""
    config = Config(config_dirs)
    for line in config.get_list("plugins"):
        words = line.split()
        if words and words[0].split(":")[0] == "karma":
            pairs = dict(zip(words[1::2], words[2::2]))
            return resolve_url(pairs.get("store"), pairs.get("db_dir"),
                               site_url=config.get("store"))
    return resolve_url(site_url=config.get("store"))


def _ip_argument(argument):
    key = ip_key(argument)
    if not argument or key is None:
        raise UsageError(f"not an IP address: {argument!r}")
    return key


def show(store, argument, out):
    """list / search."""
    wanted_key = None
    if argument and argument not in ("naughty", "nice", "both"):
        wanted_key = _ip_argument(argument)
    print(f"{'IP Address':<40} {'Penalty':>16} {'Naughty':>8} {'Nice':>6} "
          f"{'Connects':>9}", file=out)
    totals = {"naughty": 0, "nice": 0, "connects": 0}
    rows = []
    for key, value in store.items():
        if wanted_key is not None and key != wanted_key:
            continue
        penalty, naughty, nice, connects = parse_record(value)
        if argument == "naughty" and not naughty:
            continue
        if argument == "nice" and not nice:
            continue
        if argument == "both" and not (naughty and nice):
            continue
        try:
            ip = key_ip(key)
        except ValueError:
            ip = key
        shown = time.strftime("%Y-%m-%d %H:%M", time.localtime(penalty)) if penalty else "-"
        rows.append((ip, shown, naughty, nice, connects))
        totals["naughty"] += naughty
        totals["nice"] += nice
        totals["connects"] += connects
    for ip, shown, naughty, nice, connects in sorted(rows):
        print(f"{ip:<40} {shown:>16} {naughty:>8} {nice:>6} {connects:>9}", file=out)
    print(f"total: {len(rows)} IPs, {totals['naughty']} naughty, {totals['nice']} nice, "
          f"{totals['connects']} connects", file=out)
    return 0


def capture(store, argument, out):
    key = _ip_argument(argument)

    def boxed(value):
        _, naughty, nice, connects = parse_record(value)
        return f"{int(now())}:{naughty + 1}:{nice}:{connects}"
    store.update(key, boxed)
    print(f"{argument}: in the penalty box", file=out)
    return 0


def release(store, argument, out):
    key = _ip_argument(argument)

    def released(value):
        if value is None:
            return None
        _, _, nice, connects = parse_record(value)
        return f"0:0:{nice}:{connects}"
    store.update(key, released)
    print(f"{argument}: released", file=out)
    return 0


def prune(store, argument, out):
    try:
        days = float(argument) if argument else 7.0
    except ValueError:
        raise UsageError(f"prune wants a number of days, not {argument!r}")
    moment = now()
    count = pruned = 0
    for key, value in list(store.items()):
        count += 1
        penalty = parse_record(value)[0]
        if (moment - penalty) / DAY < days:
            continue
        if store.delete(key):
            pruned += 1
    print(f"pruned {pruned} of {count} DB entries", file=out)
    return 0


def dump(store, argument, out):
    for key, value in sorted(store.items()):
        print(f"{key} {value}", file=out)
    return 0


def import_lines(store, argument, out):
    if not argument:
        raise UsageError("import wants a file name, or - for stdin")
    try:
        handle = sys.stdin if argument == "-" else open(argument, encoding="utf-8",
                                                        errors="surrogateescape")
    except OSError as exc:
        raise UsageError(f"cannot read {argument}: {exc.strerror}")
    imported = skipped = 0
    with handle:
        for line in handle:
            key, _, value = line.rstrip("\r\n").partition(" ")
            key, value = key.strip(), value.strip()
            if not key or not value:
                skipped += 1
                continue
            store.set(integer_key(key), value)
            imported += 1
    print(f"imported {imported} entries, skipped {skipped} lines", file=out)
    return 0


def integer_key(key):
    """qpsmtpd's integer form for a key that starts with an IP in text
    (greylisting's ``upgrade``): ``192.0.2.1:a@b`` -> ``3221225985:a@b``;
    a whole key that is an address (IPv4 or IPv6) is converted too."""
    whole = ip_key(key)
    if whole is not None and not key.isdigit():
        return whole
    head, sep, rest = key.partition(":")
    if "." in head:
        converted = ip_key(head)
        if converted is not None:
            return converted + sep + rest
    return key


COMMANDS = {"list": show, "search": show, "capture": capture, "release": release,
            "prune": prune, "dump": dump, "import": import_lines}


if __name__ == "__main__":
    sys.exit(main())
