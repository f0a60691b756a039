"""qpsmtpd.dns: the resolver against the test DNS server (UDP and TCP on
127.0.0.1), its configuration, the cache, timeouts, and the helpers."""

import os
import socket
import subprocess
import sys
import threading
import time

import dns.flags
import dns.message
import pytest

from qpsmtpd import dns as qdns
from qpsmtpd.dns import (
    NODATA, NOERROR, NXDOMAIN, TEMPFAIL, Answer, Resolver, connection_cache,
    parse_nameserver, ptr_name, reverse_ip, reverse_name, same_network)
from qpsmtpd.connection import Connection

pytest_plugins = ["dns_fixtures"]


@pytest.fixture
def resolver(dns):
    return Resolver([("127.0.0.1", dns.port)], timeout=1, tries=1)


# -- records of each type ------------------------------------------------------

def test_a_and_aaaa(dns, resolver):
    dns.add("mx.example.com", "A", "192.0.2.25", "192.0.2.26")
    dns.add("mx.example.com", "AAAA", "2001:db8::25")
    a = resolver.lookup("mx.example.com", "A")
    assert sorted(a) == ["192.0.2.25", "192.0.2.26"]
    assert a.status == NOERROR and not a.temporary
    assert resolver.lookup("MX.Example.COM.", "aaaa") == ["2001:db8::25"]
    assert dns.asked("mx.example.com", "AAAA")


def test_mx_sorted_by_preference_and_null_mx(dns, resolver):
    dns.add("example.com", "MX", (20, "backup.example.com"), (10, "mx.example.com"))
    dns.add("nomail.example", "MX", (0, "."))
    assert resolver.lookup("example.com", "MX") == ["mx.example.com", "backup.example.com"]
    assert resolver.lookup("nomail.example", "MX") == ["."]


def test_ns_ptr_and_cname_chain(dns, resolver):
    dns.add("example.com", "NS", "ns1.example.com")
    dns.ptr("192.0.2.10", "client.example.net")
    dns.add("www.example.com", "CNAME", "web.example.com")
    dns.add("web.example.com", "CNAME", "host.example.com")
    dns.add("host.example.com", "A", "192.0.2.80")
    assert resolver.lookup("example.com", "NS") == ["ns1.example.com"]
    assert resolver.lookup("10.2.0.192.in-addr.arpa", "PTR") == ["client.example.net"]
    assert resolver.lookup("www.example.com", "A") == ["192.0.2.80"]
    assert resolver.lookup("www.example.com", "CNAME") == ["web.example.com"]


def test_set_zone_replaces_the_records(dns, resolver):
    dns.add("old.example", "A", "192.0.2.1")
    dns.set_zone({"new.example": {"A": "192.0.2.2", "MX": (5, "mx.new.example")}})
    assert resolver.lookup("old.example").status == NXDOMAIN
    assert resolver.lookup("new.example") == ["192.0.2.2"]
    assert resolver.lookup("new.example", "MX") == ["mx.new.example"]


def test_cname_to_a_missing_name_is_nxdomain(dns, resolver):
    dns.add("dangling.example.com", "CNAME", "gone.example.com")
    assert resolver.lookup("dangling.example.com", "A").status == NXDOMAIN


def test_txt_strings_are_joined(dns, resolver):
    dns.add("example.com", "TXT", ["v=spf1 ", "ip4:192.0.2.0/24 ", "-all"])
    dns.add("example.com", "TXT", "second record")
    assert sorted(resolver.lookup("example.com", "TXT")) == [
        "second record", "v=spf1 ip4:192.0.2.0/24 -all"]


def test_long_txt_over_udp_and_over_tcp(dns, resolver):
    key = "v=DKIM1; k=rsa; p=" + "A" * 600          # 3 strings, one datagram
    huge = "x" * 3000                                # more than EDNS's 1232 octets
    dns.add("sel._domainkey.example.com", "TXT", key)
    dns.add("huge.example.com", "TXT", huge)
    assert resolver.lookup("sel._domainkey.example.com", "TXT") == [key]
    assert resolver.lookup("huge.example.com", "TXT") == [huge]
    protocols = [q.proto for q in dns.queries if q.name == "huge.example.com"]
    assert protocols == ["udp", "tcp"]


def test_truncated_answer_is_asked_again_over_tcp(dns, resolver):
    dns.add("big.example.com", "A", "192.0.2.5").tcp_only("big.example.com")
    assert resolver.lookup("big.example.com") == ["192.0.2.5"]
    assert [q.proto for q in dns.queries] == ["udp", "tcp"]


# -- negative and failed lookups ---------------------------------------------

def test_nxdomain_and_nodata(dns, resolver):
    dns.add("example.com", "A", "192.0.2.1")
    missing = resolver.lookup("missing.example.com")
    assert missing == [] and missing.status == NXDOMAIN and not missing.temporary
    empty = resolver.lookup("example.com", "MX")
    assert empty == [] and empty.status == NODATA


def test_servfail_and_refused_are_temporary(dns, resolver):
    dns.servfail("broken.example").refuse("*.refused.example")
    broken = resolver.lookup("broken.example")
    assert broken.temporary and broken.status == TEMPFAIL
    assert broken.error == "SERVFAIL" and broken.reason == "SERVFAIL"
    refused = resolver.lookup("a.refused.example", "TXT")
    assert refused.temporary and refused.error == "REFUSED"


def test_dead_server_costs_one_timeout(dns, resolver, elapsed):
    dns.drop("*.dead.example")
    answer, seconds = elapsed(resolver.lookup, "a.dead.example")
    assert answer.temporary and answer.error == "timeout"
    assert 0.9 <= seconds < 1.6


def test_names_that_cannot_exist_are_not_asked(dns, resolver):
    for name in ("bad..example.com", "x" * 64 + ".example.com", "", "."):
        answer = resolver.lookup(name)
        assert answer.status == NXDOMAIN and answer == [], name
    assert dns.queries == []


def test_unknown_type_is_a_temporary_failure_not_an_exception(dns, resolver):
    assert resolver.lookup("example.com", "NOSUCHTYPE").temporary


# -- many at once, in the background -------------------------------------------

def test_lookup_many_runs_in_parallel(dns, resolver, elapsed):
    dns.add("good.example", "A", "192.0.2.7")
    dns.drop("*.dead.example")
    queries = [("a.dead.example", "A"), ("b.dead.example", "TXT"),
               ("good.example", "A"), ("c.dead.example", "A")]
    answers, seconds = elapsed(resolver.lookup_many, queries)
    assert [a.status for a in answers] == [TEMPFAIL, TEMPFAIL, NOERROR, TEMPFAIL]
    assert answers[2] == ["192.0.2.7"]
    assert seconds < 1.6     # three dead names cost one timeout, not three


def test_slow_answers_within_the_timeout_arrive(dns, resolver, elapsed):
    dns.add("slow.example", "A", "192.0.2.9").delay("slow.example", 0.4)
    answer, seconds = elapsed(resolver.lookup, "slow.example")
    assert answer == ["192.0.2.9"] and 0.35 < seconds < 0.9


def test_start_runs_in_the_background(dns, resolver, elapsed):
    dns.add("slow.example", "A", "192.0.2.9").delay("slow.example", 0.3)
    dns.drop("dead.example")
    pending, seconds = elapsed(resolver.start, [("slow.example", "A"),
                                                ("dead.example", "A")])
    assert seconds < 0.2
    answers, waited = elapsed(pending.wait)
    assert answers[0] == ["192.0.2.9"] and answers[1].temporary
    assert 0.7 < waited < 1.6
    assert pending.wait() is answers   # read once


def test_waiting_late_costs_nothing(dns, resolver, elapsed):
    dns.drop("dead.example")
    pending = resolver.start([("dead.example", "A")])
    time.sleep(1.3)
    answers, seconds = elapsed(pending.wait)
    assert answers[0].temporary and seconds < 0.1


# -- how it runs: plain sockets, answers read by wait() -------------------------------

@pytest.fixture
def silent_server():
    """A UDP port that receives queries and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock


def received(sock):
    """The queries waiting on ``sock``: ``[(message, peer)]``."""
    sock.setblocking(False)
    queries = []
    while True:
        try:
            data, peer = sock.recvfrom(65535)
        except BlockingIOError:
            return queries
        queries.append((dns.message.from_wire(data), peer))


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def test_answers_that_arrived_meanwhile_are_read_without_waiting(dns, elapsed):
    dns.add("a.example", "A", "192.0.2.1").add("b.example", "TXT", "hello")
    resolver = Resolver([("127.0.0.1", dns.port)], timeout=1, tries=2)
    pending, seconds = elapsed(resolver.start, [("a.example", "A"), ("b.example", "TXT"),
                                                ("c.example", "A")])
    assert seconds < 0.1
    time.sleep(0.3)
    dns.drop_all()          # from now on only what is in the socket counts
    answers, seconds = elapsed(pending.wait)
    assert answers == [["192.0.2.1"], ["hello"], []] and answers[2].status == NXDOMAIN
    assert seconds < 0.05
    assert len(dns.queries) == 3


def test_dead_server_costs_one_timeout_for_a_batch(silent_server, elapsed):
    resolver = Resolver([silent_server.getsockname()], timeout=1, tries=2)
    names = [(f"n{i}.example", "A") for i in range(5)]
    answers, seconds = elapsed(resolver.lookup_many, names)
    assert [(a.status, a.error) for a in answers] == [(TEMPFAIL, "timeout")] * 5
    assert 0.95 <= seconds < 1.5
    queries = received(silent_server)
    asked = sorted(m.question[0].name.to_text() for m, _ in queries)
    assert asked == sorted([f"n{i}.example." for i in range(5)] * 2)     # two tries each


def test_waiting_soon_after_start_keeps_the_schedule(silent_server, elapsed):
    resolver = Resolver([silent_server.getsockname()], timeout=1, tries=2)
    pending = resolver.start([("dead.example", "A")])
    time.sleep(0.3)
    answers, seconds = elapsed(pending.wait)      # ends 1 s after start
    assert answers[0].temporary and 0.6 < seconds < 0.95
    assert len(received(silent_server)) == 2


def test_waiting_late_still_makes_the_other_tries(silent_server, elapsed):
    """After the first try's time, the second goes out when wait() begins:
    wait() then blocks (tries-1)/tries of the timeout, never more."""
    resolver = Resolver([silent_server.getsockname()], timeout=1, tries=2)
    pending = resolver.start([("dead.example", "A")])
    time.sleep(1.2)
    answers, seconds = elapsed(pending.wait)
    assert answers[0].temporary and answers[0].error == "timeout"
    assert 0.45 < seconds < 0.8
    assert len(received(silent_server)) == 2


def test_waiting_late_reaches_the_second_server(dns, silent_server, elapsed):
    dns.add("example.com", "A", "192.0.2.1")
    resolver = Resolver([silent_server.getsockname(), ("127.0.0.1", dns.port)],
                        timeout=1, tries=2)
    pending = resolver.start([("example.com", "A")])
    time.sleep(1.2)
    answers, seconds = elapsed(pending.wait)
    assert answers == [["192.0.2.1"]] and seconds < 0.3
    assert len(received(silent_server)) == 1


def test_server_errors_go_to_the_next_server_at_once(dns, more_dns_servers, elapsed):
    first = more_dns_servers().servfail("example.com", "both.example")
    dns.add("example.com", "A", "192.0.2.1").refuse("both.example")
    resolver = Resolver([("127.0.0.1", first.port), ("127.0.0.1", dns.port)],
                        timeout=2, tries=2)
    answers, seconds = elapsed(resolver.lookup_many, [("example.com", "A"),
                                                      ("both.example", "A")])
    assert answers[0] == ["192.0.2.1"]
    assert answers[1].temporary and answers[1].error == "SERVFAIL, REFUSED"
    assert seconds < 0.3


@pytest.mark.parametrize("how", ["id", "address", "question"])
@pytest.mark.parametrize("late", [False, True])
def test_forged_answers_are_ignored(dns, resolver, elapsed, how, late):
    from dns_fixtures import FORGED_A, FORGED_TXT
    dns.add("spoofed.example", "A", "192.0.2.1").add("spoofed.example", "TXT", "true")
    dns.forge("spoofed.example", how)
    pending = resolver.start([("spoofed.example", "A"), ("spoofed.example", "TXT")])
    if late:
        time.sleep(0.5)     # the forged and the true answers are both waiting
    answers, seconds = elapsed(pending.wait)
    assert answers == [["192.0.2.1"], ["true"]]
    assert FORGED_A not in answers[0] and FORGED_TXT not in answers[1]
    assert seconds < 0.05 if late else 0.15 < seconds < 0.6


def test_truncated_answer_read_late_is_asked_again_over_tcp(dns, resolver, elapsed):
    dns.add("big.example.com", "A", "192.0.2.5").tcp_only("big.example.com")
    dns.add("small.example.com", "A", "192.0.2.6")
    pending = resolver.start([("big.example.com", "A"), ("small.example.com", "A")])
    time.sleep(0.2)
    answers, seconds = elapsed(pending.wait)
    assert answers == [["192.0.2.5"], ["192.0.2.6"]] and seconds < 0.3
    assert [q.proto for q in dns.queries if q.name == "big.example.com"] == ["udp", "tcp"]


def test_truncated_answer_and_no_tcp_is_a_temporary_failure(silent_server, elapsed):
    """The server of this test answers by hand: TC set, and nothing
    listens on its TCP port."""
    resolver = Resolver([silent_server.getsockname()], timeout=1, tries=1)
    pending = resolver.start([("big.example", "TXT")])
    [(query, peer)] = received(silent_server)
    reply = dns.message.make_response(query)
    reply.flags |= dns.flags.TC
    silent_server.sendto(reply.to_wire(), peer)
    answers, seconds = elapsed(pending.wait)
    assert answers[0].temporary and answers[0].error == "Connection refused"
    assert seconds < 0.3


def test_no_thread_is_started(dns, resolver):
    dns.add("example.com", "A", "192.0.2.1").drop("dead.example")
    threads = set(threading.enumerate())
    pending = resolver.start([("example.com", "A"), ("dead.example", "A")])
    assert set(threading.enumerate()) <= threads
    answers = pending.wait()
    assert answers[0] == ["192.0.2.1"] and answers[1].temporary
    assert set(threading.enumerate()) <= threads


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_sockets_are_closed_after_wait(dns, resolver):
    dns.add("example.com", "A", "192.0.2.1")
    before = open_fds()
    pending = resolver.start([("example.com", "A"), ("nx.example", "A"), ("nx2.example", "A")])
    assert open_fds() > before
    pending.wait()
    assert open_fds() == before
    resolver.lookup_many([("example.com", "A"), ("example.com", "MX")])
    assert open_fds() == before


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_a_batch_never_waited_for_closes_its_sockets(dns, resolver):
    """dnsbl keeps its batch in the connection's notes until RCPT; a client
    that leaves before RCPT drops it with the connection."""
    dns.add("example.com", "A", "192.0.2.1")
    before = open_fds()
    connection = Connection(remote_ip="192.0.2.10")
    connection.notes["dnsbl_lookups"] = (
        [("zen.example", None)],
        resolver.start([("10.2.0.192.zen.example", "TXT")], connection_cache(connection)))
    assert open_fds() > before
    del connection
    assert open_fds() == before
    pending = resolver.start([("example.com", "A")])
    pending.close()
    assert open_fds() == before
    answers, seconds = timed_wait(pending)
    assert answers[0].temporary and answers[0].error == "cancelled" and seconds < 0.05


def timed_wait(pending):
    started = time.monotonic()
    answers = pending.wait()
    return answers, time.monotonic() - started


def test_warm_up_runs_a_batch_of_its_own(monkeypatch):
    monkeypatch.setattr(qdns, "_warmed", False)
    answers = []
    real_wait = qdns.PendingLookups.wait
    monkeypatch.setattr(qdns.PendingLookups, "wait",
                        lambda self: answers.extend(real_wait(self)) or self._answers)
    before = open_fds() if os.path.isdir("/proc/self/fd") else None
    threads = set(threading.enumerate())
    qdns.warm_up()
    qdns.warm_up()          # once is enough
    assert [a.status for a in answers] == [NOERROR] * 7 + [NXDOMAIN]
    assert ["mx.example"] in answers and ["v=spf1 -all"] in answers
    assert set(threading.enumerate()) <= threads
    if before is not None:
        assert open_fds() == before
    assert "dns.rdtypes.ANY.MX" in sys.modules and "dns.rdtypes.IN.AAAA" in sys.modules


def test_importing_the_module_starts_no_event_loop_machinery():
    code = ("import sys, qpsmtpd.dns; "
            "print(sorted(m for m in ('asyncio', 'dns.asyncresolver', 'dns.resolver', "
            "'dns.query', 'concurrent.futures') if m in sys.modules))")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout
    assert output.strip() == "[]"


def test_dnspython_is_imported_only_to_read_answers(dns):
    """A batch started at connect sends without dnspython (the greeting of
    the per-connection program does not wait for its import); reading the
    answers imports it."""
    dns.add("example.com", "A", "192.0.2.1")
    code = ("import sys; from qpsmtpd.dns import Resolver; "
            f"r = Resolver([('127.0.0.1', {dns.port})], 2); "
            "p = r.start([('example.com', 'A'), ('1.2.0.192.bl.example', 'TXT')]); "
            "print('dns.message' in sys.modules, 'dns.name' in sys.modules); "
            "print(list(p.wait()[0]), 'dns.message' in sys.modules)")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout
    assert output.split("\n")[:2] == ["False False", "['192.0.2.1'] True"]


# -- the per-connection cache --------------------------------------------------

def test_cache_answers_repeated_questions(dns, resolver):
    dns.add("example.com", "A", "192.0.2.1")
    dns.servfail("broken.example")
    cache = connection_cache(Connection(remote_ip="192.0.2.10"))
    for _ in range(3):
        assert resolver.lookup("Example.com.", "A", cache) == ["192.0.2.1"]
        assert resolver.lookup("broken.example", "A", cache).temporary
        assert resolver.lookup_many([("example.com", "A"), ("nx.example", "A")], cache)
    assert [q.name for q in dns.queries] == ["example.com", "broken.example", "nx.example"]
    assert ("example.com", "A") in cache


def test_cache_keeps_failures_so_a_dead_server_costs_once(dns, resolver, elapsed):
    dns.drop_all()
    cache = {}
    resolver.lookup("dead.example", "A", cache)
    answer, seconds = elapsed(resolver.lookup, "dead.example", "A", cache)
    assert answer.temporary and seconds < 0.1


def test_cache_is_bounded(dns, resolver, monkeypatch):
    monkeypatch.setattr(qdns, "CACHE_LIMIT", 2)
    cache = {}
    resolver.lookup_many([(f"n{i}.example", "A") for i in range(5)], cache)
    assert len(cache) == 2


def test_connection_cache_lives_in_the_notes():
    connection = Connection(remote_ip="192.0.2.10")
    cache = connection_cache(connection)
    assert connection.notes["dns_cache"] is cache
    assert connection_cache(connection) is cache
    assert connection_cache(None) is None


# -- servers, tries, configuration ---------------------------------------------------

def test_tries_resend_within_the_timeout(dns, elapsed):
    dns.drop("dead.example")
    resolver = Resolver([("127.0.0.1", dns.port)], timeout=1, tries=3)
    answer, seconds = elapsed(resolver.lookup, "dead.example")
    assert answer.temporary and seconds < 1.6
    assert len([q for q in dns.queries if q.name == "dead.example"]) == 3


def test_second_server_answers_when_the_first_is_dead(dns, more_dns_servers, elapsed):
    dead = more_dns_servers().drop_all()
    dns.add("example.com", "A", "192.0.2.1")
    resolver = Resolver([("127.0.0.1", dead.port), ("127.0.0.1", dns.port)],
                        timeout=2, tries=2)
    answer, seconds = elapsed(resolver.lookup, "example.com")
    assert answer == ["192.0.2.1"] and seconds < 1.5
    assert dead.asked("example.com")


def test_nothing_listening_is_a_timeout(dns, elapsed):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    resolver = Resolver([("127.0.0.1", port)], timeout=0.5, tries=1)
    answer, seconds = elapsed(resolver.lookup, "example.com")
    assert answer.temporary and answer.error == "timeout" and seconds < 1.0


def test_ipv6_name_server(more_dns_servers):
    try:
        server = more_dns_servers("::1")
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    server.add("example.com", "A", "192.0.2.1")
    resolver = Resolver([parse_nameserver(f"[::1]:{server.port}")], timeout=1)
    assert resolver.lookup("example.com") == ["192.0.2.1"]


@pytest.mark.parametrize("text, expected", [
    ("192.0.2.53", ("192.0.2.53", 53)),
    (" 192.0.2.53:5353 ", ("192.0.2.53", 5353)),
    ("2001:db8::53", ("2001:db8::53", 53)),
    ("[2001:db8::53]:5353", ("2001:db8::53", 5353)),
    ("[2001:db8::53]", ("2001:db8::53", 53)),
    ("ns1.example.com", None),
    ("192.0.2.53:0", None),
    ("192.0.2.53:70000", None),
    ("192.0.2.53:dns", None),
    ("[2001:db8::53]5353", None),
    ("999.0.2.53", None),
    ("", None),
])
def test_parse_nameserver(text, expected):
    assert parse_nameserver(text) == expected


def test_from_config_reads_the_three_files(make_app, dns):
    app = make_app(config={"dns_servers": ["# ours", f"127.0.0.1:{dns.port}",
                                           "not-an-address", "[::1]:5300"],
                           "dns_timeout": "2.5", "dns_tries": "3"})
    resolver = app.resolver
    assert resolver.nameservers == [("127.0.0.1", dns.port), ("::1", 5300)]
    assert (resolver.timeout, resolver.tries) == (2.5, 3)
    assert app.resolver is resolver
    assert any("dns_servers: ignoring invalid entry 'not-an-address'" in line
               for line in app.captured_log)


@pytest.mark.parametrize("timeout, tries", [("0", "0"), ("-1", "x"), ("soon", "-2")])
def test_from_config_refuses_bad_numbers(make_app, timeout, tries):
    app = make_app(config={"dns_servers": "127.0.0.1", "dns_timeout": timeout,
                           "dns_tries": tries})
    assert (app.resolver.timeout, app.resolver.tries) == (5.0, 2)
    assert any(f"dns_timeout: invalid value {timeout!r}" in line for line in app.captured_log)
    assert any(f"dns_tries: invalid value {tries!r}" in line for line in app.captured_log)


def test_default_servers_come_from_resolv_conf(make_app):
    resolver = make_app().resolver
    assert resolver.nameservers == qdns.system_nameservers() or \
        resolver.nameservers == [("127.0.0.1", 53)]
    assert (resolver.timeout, resolver.tries) == (5.0, 2)


def test_resolver_needs_a_server():
    with pytest.raises(ValueError):
        Resolver([])


# -- reverse lookups and address helpers ------------------------------------------------

def test_reverse_name(dns, resolver):
    dns.ptr("192.0.2.10", "client.example.net", "other.example.net")
    dns.add("client.example.net", "A", "192.0.2.99")
    dns.add("other.example.net", "A", "192.0.2.10")
    dns.ptr("2001:db8::10", "v6.example.net")
    dns.add("v6.example.net", "AAAA", "2001:db8::10")
    assert reverse_name("192.0.2.10", resolver) == "client.example.net"
    assert reverse_name("::ffff:192.0.2.10", resolver) == "client.example.net"
    assert reverse_name("192.0.2.10", resolver, confirm=True) == "other.example.net"
    assert reverse_name("2001:db8::10", resolver, confirm=True) == "v6.example.net"
    assert reverse_name("192.0.2.11", resolver) is None
    assert reverse_name("not an ip", resolver) is None
    dns.servfail("11.2.0.192.in-addr.arpa")
    assert reverse_name("192.0.2.11", resolver) is None


def test_reverse_name_fills_the_connection_cache(dns, resolver):
    dns.ptr("192.0.2.10", "client.example.net")
    cache = {}
    reverse_name("192.0.2.10", resolver, cache)
    assert cache[("10.2.0.192.in-addr.arpa", "PTR")] == ["client.example.net"]


def test_reverse_name_is_bounded_by_the_timeout(dns, resolver, elapsed):
    dns.drop_all()
    name, seconds = elapsed(reverse_name, "192.0.2.10", resolver)
    assert name is None and seconds < 1.6


@pytest.mark.parametrize("ip, reversed_ip", [
    ("192.0.2.10", "10.2.0.192"),
    ("::ffff:192.0.2.10", "10.2.0.192"),
    ("[192.0.2.10]", "10.2.0.192"),
    ("2001:db8::1", "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"),
    ("[IPv6:2001:db8::1]",
     "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"),
    ("192.0.2.256", None),
    ("example.com", None),
])
def test_reverse_ip(ip, reversed_ip):
    assert reverse_ip(ip) == reversed_ip


def test_ptr_name():
    assert ptr_name("192.0.2.10") == "10.2.0.192.in-addr.arpa"
    assert ptr_name("2001:db8::1").endswith(".8.b.d.0.1.0.0.2.ip6.arpa")
    with pytest.raises(ValueError):
        ptr_name("nope")


@pytest.mark.parametrize("first, second, same", [
    ("192.0.2.1", "192.0.2.200", True),
    ("192.0.2.1", "192.0.3.1", False),
    ("2001:db8::1", "2001:db8::ffff:1", True),
    ("2001:db8::1", "2001:db8:0:1::1", False),
    ("192.0.2.1", "::ffff:192.0.2.9", True),
    ("192.0.2.1", "2001:db8::1", False),
    ("192.0.2.1", "bogus", False),
])
def test_same_network(first, second, same):
    assert same_network(first, second) is same


def test_answer_is_a_plain_list():
    answer = Answer("example.com", "A", ["192.0.2.1"])
    assert answer == ["192.0.2.1"] and answer.status == NOERROR
    assert Answer("example.com", "A").status == NODATA
    failed = Answer("example.com", "A", status=TEMPFAIL, error="timeout")
    assert failed.temporary and failed.reason == "timeout" and not failed
    assert "TEMPFAIL" in repr(failed)


# -- the Plugin helpers -------------------------------------------------------------

def test_plugin_helpers_use_the_site_resolver_and_the_cache(make_app, dns):
    dns.add("example.com", "A", "192.0.2.1").add("example.com", "AAAA", "2001:db8::1")
    dns.add("example.com", "MX", (10, "mx.example.com")).add("example.com", "NS", "ns.example.com")
    dns.add("example.com", "TXT", "hello").ptr("192.0.2.10", "client.example.net")
    app = make_app(config=dns.config(timeout=1))
    plugin = app.dispatcher.instantiate("relay", [])   # any plugin will do

    class Session:
        connection = Connection(remote_ip="192.0.2.10")

    session = Session()
    assert plugin.resolve_a(session, "example.com") == ["192.0.2.1"]
    assert plugin.resolve_aaaa(session, "example.com") == ["2001:db8::1"]
    assert plugin.resolve_mx(session, "example.com") == ["mx.example.com"]
    assert plugin.resolve_ns(session, "example.com") == ["ns.example.com"]
    assert plugin.resolve_txt(session, "example.com") == ["hello"]
    assert plugin.resolve_ptr(session, "192.0.2.10") == ["client.example.net"]
    assert plugin.resolve_ptr(None, "10.2.0.192.in-addr.arpa") == ["client.example.net"]
    assert plugin.resolve_many(session, [("example.com", "A"), ("nx.example", "A")])[1] == []
    assert plugin.resolve_later(session, [("example.com", "TXT")]).wait() == [["hello"]]
    assert plugin.resolve_a(session, "example.com") == ["192.0.2.1"]
    assert len([q for q in dns.queries if q.name == "example.com" and q.rdtype == "A"]) == 1


def test_plugin_timeout_overrides_the_site_timeout(make_app, dns, elapsed):
    dns.drop_all()
    app = make_app(config=dns.config(timeout=5))
    plugin = app.dispatcher.instantiate("relay", [])
    plugin.dns_timeout = 0.5
    answer, seconds = elapsed(plugin.resolve_a, None, "example.com")
    assert answer.temporary and seconds < 1.0


# -- the per-connection program names its peer (inetd: no TCPREMOTEIP) -------------

def inetd_session(tmp_path, dns, extra=None):
    """Run ``python -m qpsmtpd`` on an accepted TCP socket, as inetd does;
    returns the greeting, the EHLO reply's first line and the seconds the
    greeting took."""
    import os
    import subprocess
    import sys
    from conftest import ROOT, write_config
    config = {"me": "mx.example.org", "spool_dir": str(tmp_path / "spool") + "/",
              "plugins": ["rcpt_ok"], **dns.config(timeout=1)}
    config.update(extra or {})
    write_config(str(tmp_path / "config"), config)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TCP")}
    env["PYTHONPATH"] = ROOT
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "qpsmtpd", "--config-dir",
                             str(tmp_path / "config")], stdin=server, stdout=server,
                            stderr=subprocess.DEVNULL, env=env, cwd=str(tmp_path))
    server.close()
    with client, client.makefile("rb") as replies:
        client.settimeout(20)
        greeting = replies.readline().decode()
        seconds = time.monotonic() - started
        client.sendall(b"EHLO c.example\r\nQUIT\r\n")
        ehlo = replies.readline().decode()
    proc.wait(20)
    return greeting, ehlo, seconds


def test_inetd_peer_gets_its_ptr_name(tmp_path, dns):
    dns.ptr("127.0.0.1", "loopback.example.net")
    greeting, ehlo, _ = inetd_session(tmp_path, dns)
    assert greeting.startswith("220 mx.example.org ESMTP")
    assert ehlo == "250-mx.example.org Hi loopback.example.net [127.0.0.1]\r\n"
    assert dns.asked("1.0.0.127.in-addr.arpa", "PTR")


def test_inetd_peer_without_ptr_or_dns_is_named_by_ip(tmp_path, dns):
    _, ehlo, usual = inetd_session(tmp_path, dns)
    assert ehlo == "250-mx.example.org Hi [127.0.0.1] [127.0.0.1]\r\n"
    dns.drop_all()
    _, ehlo, seconds = inetd_session(tmp_path, dns)
    assert ehlo == "250-mx.example.org Hi [127.0.0.1] [127.0.0.1]\r\n"
    assert dns.asked("1.0.0.127.in-addr.arpa", "PTR")
    assert 0.5 < seconds - usual < 2.0        # one 1 s timeout, no more


# -- a typical site (config.sample's DNS plugins) with a dead DNS server --------------

def test_typical_site_with_a_dead_dns_server(dns_session, dns, monkeypatch, elapsed):
    """Every command is answered within a few timeouts (1 s here): each
    plugin waits one timeout at most, and nothing is refused for it."""
    monkeypatch.delenv("RBLSMTPD", raising=False)
    dns.drop_all()
    plugins = ["fcrdns", "dnsbl reject naughty reject_type disconnect", "rhsbl",
               "helo policy strict reject 0", "resolvable_fromhost reject 0"]
    config = {"dnsbl_zones": ["zen.example", "bl.example"], "rhsbl_zones": "rhs.example"}
    client, seconds = elapsed(dns_session, plugins, config)
    assert client.greeting.code == 220 and seconds < 3
    for line, code in [("EHLO client.example.net", 250),
                       ("MAIL FROM:<a@example.com>", 250),
                       ("RCPT TO:<b@example.org>", 250), ("DATA", 354)]:
        reply, seconds = elapsed(client.cmd, line)
        assert reply.code == code, (line, reply)
        assert seconds < 3, (line, seconds)
    client.send("Subject: hi\r\n\r\nhello\r\n.\r\n")
    assert client.reply().code == 250
    assert b"iprev=temperror policy.iprev=192.0.2.10" in client.queued()[0]
    assert "naughty" not in client.session.connection.notes


# -- the query on the wire ----------------------------------------------------------

@pytest.mark.parametrize("name, rdtype", [
    ("1.0.0.127.zen.example", "TXT"), ("_dmarc.example.com", "TXT"),
    ("bücher.example", "MX"), ("a" * 63 + ".example", "A"), ("example", "NAPTR"),
])
def test_queries_are_what_dnspython_would_send(name, rdtype):
    import dns.message
    from qpsmtpd import dns as qdns
    expected = dns.message.make_query(name, rdtype, use_edns=0, payload=qdns.EDNS_PAYLOAD)
    expected.id = 0x1234
    question = qdns._name_wire(name) + qdns._TYPE_CLASS.pack(qdns._type_number(rdtype), 1)
    ours = qdns._HEADER.pack(0x1234, qdns._FLAG_RD, 1, 0, 0, 1) + question + qdns._OPT
    assert ours == expected.to_wire()


def test_an_answer_must_repeat_the_question():
    import dns.message
    from qpsmtpd import dns as qdns
    query = dns.message.make_query("Host.Example", "A")
    question = qdns._name_wire("host.example") + qdns._TYPE_CLASS.pack(1, 1)
    answer = dns.message.make_response(query).to_wire()
    assert qdns._answers_question(answer, question)           # case does not matter
    assert not qdns._answers_question(query.to_wire(), question)       # not a response
    other = dns.message.make_response(dns.message.make_query("host.example", "AAAA"))
    assert not qdns._answers_question(other.to_wire(), question)
    assert not qdns._answers_question(answer[:20], question)
