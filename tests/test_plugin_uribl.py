"""uribl over real sessions and the test DNS server: links found in the
streamed body, actions and the X-URIBL-Match header that lands, masks,
whitelist, the lookup cap, failures and what a dead server costs."""

import pytest

from qpsmtpd.plugin import PluginError

pytest_plugins = ["dns_fixtures"]

ZONE = "uribl.example"


def send(dns_session, body, line="uribl", zones=(ZONE,), config=None, headers="",
         **kwargs):
    files = {"uribl_zones": list(zones)}
    files.update(config or {})
    client = dns_session([line], files, **kwargs)
    message = f"Subject: offer\r\n{headers}\r\n{body}\r\n.\r\n"
    reply = client.send_message("a@example.com", ["b@example.org"], message)
    return client, reply


def listed(dns, name, text=None, address="127.0.0.2", zone=ZONE):
    dns.add(f"{name}.{zone}", "A", address)
    if text is not None:
        dns.add(f"{name}.{zone}", "TXT", text)


def asked_names(dns):
    return sorted({q.name[:-len(ZONE) - 1] for q in dns.queries if q.name.endswith(ZONE)})


# -- actions and the header that lands ---------------------------------------------

def test_listed_link_adds_a_header(dns_session, dns):
    listed(dns, "spam.example.com", "Blocked, see https://uribl.example/")
    client, reply = send(dns_session, "Buy now: http://spam.example.com/pills?x=1")
    assert reply.code == 250
    message = client.queued()[0]
    assert b"Subject: offer\nX-URIBL-Match: spam.example.com in uribl.example: " \
           b"Blocked, see https://uribl.example/\n\n" in message
    assert client.log_contains("uribl: spam.example.com in uribl.example: Blocked")
    assert client.log_contains("lookups finished in")


def test_report_without_txt_shows_the_address(dns_session, dns):
    listed(dns, "spam.example.com", address="127.0.0.4")
    client, reply = send(dns_session, "http://spam.example.com/")
    assert b"X-URIBL-Match: spam.example.com in uribl.example: 127.0.0.4\n" \
        in client.queued()[0]


@pytest.mark.parametrize("line, zones, code", [
    ("uribl action deny", [ZONE], 552),
    ("uribl action denysoft", [ZONE], 452),
    ("uribl", [f"{ZONE} -1 deny"], 552),
    ("uribl action deny", [f"{ZONE} -1 log"], 250),
])
def test_actions(dns_session, dns, line, zones, code):
    listed(dns, "spam.example.com", "listed")
    client, reply = send(dns_session, "see http://spam.example.com", line=line, zones=zones)
    assert reply.code == code
    if code != 250:
        assert reply.lines == [f"{code // 100}.7.1 spam.example.com in uribl.example: listed"]
        assert client.queued() == []
    else:
        assert b"X-URIBL-Match" not in client.queued()[0]
        assert client.log_contains("uribl: spam.example.com in uribl.example: listed")


def test_not_listed_passes(dns_session, dns):
    client, reply = send(dns_session, "see http://www.example.com/ and https://example.net")
    assert reply.code == 250
    assert b"X-URIBL-Match" not in client.queued()[0]
    assert client.log_contains("(data_post) uribl: pass")
    assert asked_names(dns) == ["example.com", "example.net", "www.example.com"]


# -- what counts as a link --------------------------------------------------------

@pytest.mark.parametrize("body, names", [
    ("http://www.shop.example.co.uk/x", ["example.co.uk", "www.shop.example.co.uk"]),
    ("visit www.spam.example.com today", ["example.com", "www.spam.example.com"]),
    ("HTTPS://User:pw@Spam.Example.COM:8443/", ["example.com", "spam.example.com"]),
    ("spam.example.com and file.py, e.g. nothing", []),
    ("http://localhost/ http://intranet/ http://foo.invalidtld/", []),
    ("http://spam.exa=\r\nmple.com/", ["example.com", "spam.example.com"]),
    ("http://spam=2Eexample%2ecom/", ["example.com", "spam.example.com"]),
    ("<a href=3D\"http://spam&#46;example.com\">", ["example.com", "spam.example.com"]),
    ("http://192.0.2.99/", ["99.2.0.192"]),
    ("http://3221226083/", ["99.2.0.192"]),
    ("http://0xc0.0x0.0x2.0x63/", ["99.2.0.192"]),
    ("http://0300.0.02.0143/", ["99.2.0.192"]),
    ("http://999.1.1.1/ http://99999999999/", []),
])
def test_links_found(dns_session, dns, body, names):
    client, reply = send(dns_session, body)
    assert reply.code == 250
    assert asked_names(dns) == names
    if not names:
        assert client.log_contains("uribl: skip, no URIs found")


def test_checkip_no(dns_session, dns):
    send(dns_session, "http://192.0.2.99/ http://spam.example.com/", line="uribl checkip no")
    assert asked_names(dns) == ["example.com", "spam.example.com"]


def test_headers_only_with_check_headers(dns_session, dns):
    headers = "List-Unsubscribe: <http://spam.example.com/u>\r\n"
    send(dns_session, "no links", headers=headers)
    assert asked_names(dns) == []
    send(dns_session, "no links", line="uribl check-headers 1", headers=headers)
    assert asked_names(dns) == ["example.com", "spam.example.com"]


def test_whitelisted_domains_are_not_asked(dns_session, dns):
    client, reply = send(dns_session, "http://www.example.com/ http://spam.example.net/",
                         config={"uribl_whitelist_domains": ["example.com"]})
    assert asked_names(dns) == ["example.net", "spam.example.net"]
    assert client.log_contains("skip, whitelisted URI domain www.example.com")


def test_lookups_are_capped(dns_session, dns):
    body = "\r\n".join(f"http://site{n}.example.com/" for n in range(30))
    client, reply = send(dns_session, body, line="uribl max_names 5",
                         zones=[ZONE, "other.example"])
    assert reply.code == 250
    assert len({q.name for q in dns.queries}) == 10           # 5 names x 2 zones
    assert len(dns.queries) == 20                            # A and TXT each
    assert client.log_contains("uribl: stopped at 5 names")


def test_link_at_the_end_of_a_big_streamed_body(dns_session, dns):
    listed(dns, "spam.example.com", "listed")
    filler = ("x" * 998 + "\r\n") * 3000 + "y" * 200000     # 3 MB and a 200 kB line
    client, reply = send(dns_session, filler + "\r\nhttp://spam.example.com/",
                         line="uribl action deny")
    assert reply.code == 552


# -- masks --------------------------------------------------------------------------

@pytest.mark.parametrize("answer, listed_", [
    ("127.0.0.2", True), ("127.0.0.8", True), ("127.0.0.4", False),
    ("127.0.0.10", True), ("192.0.2.2", False), ("127.255.255.254", False)])
def test_mask_selects_lists(dns_session, dns, answer, listed_):
    listed(dns, "spam.example.com", address=answer, zone="multi.example")
    client, reply = send(dns_session, "http://spam.example.com/", line="uribl action deny",
                         zones=["multi.example 2,8"])
    assert reply.code == (552 if listed_ else 250)


# -- failures ---------------------------------------------------------------------------

def test_dead_server_costs_one_timeout(dns_session, dns, elapsed):
    dns.drop_all()
    client = dns_session(["uribl"], {"uribl_zones": [ZONE, "other.example"]})
    client.start_data("a@example.com", ["b@example.org"])
    client.send("Subject: x\r\n\r\nhttp://a.example.com/ http://b.example.net/\r\n.\r\n")
    reply, seconds = elapsed(client.reply)
    assert reply.code == 250
    assert 0.9 < seconds < 2.0              # 16 lookups, one timeout
    assert client.log_contains("uribl: a.example.com.uribl.example query failed: timeout")


def test_servfail_counts_as_not_listed(dns_session, dns):
    dns.servfail(f"spam.example.com.{ZONE}")
    client, reply = send(dns_session, "http://spam.example.com/", line="uribl action deny")
    assert reply.code == 250
    assert client.log_contains("query failed: SERVFAIL")


def test_no_zones(dns_session, dns):
    client, reply = send(dns_session, "http://spam.example.com/", zones=[])
    assert reply.code == 250
    assert dns.queries == []
    assert client.log_contains("uribl: skip, no zones")


@pytest.mark.parametrize("line, zones", [
    ("uribl action bounce", [ZONE]),
    ("uribl", [f"{ZONE} 2,x"]),
    ("uribl", [f"{ZONE} 2 reject"]),
])
def test_bad_configuration_stops_the_start(make_app, line, zones):
    with pytest.raises(PluginError):
        make_app([line], {"uribl_zones": zones})


def test_bad_zone_line_added_later_is_skipped(dns_session, dns, tmp_path):
    listed(dns, "spam.example.com", "listed")
    client = dns_session(["uribl action deny"], {"uribl_zones": [ZONE]})
    (tmp_path / "config" / "uribl_zones").write_text(f"bad.example x\n{ZONE}\n")
    reply = client.send_message("a@example.com", ["b@example.org"],
                                "Subject: x\r\n\r\nhttp://spam.example.com/\r\n.\r\n")
    assert reply.code == 552
    assert client.log_contains("uribl_zones: bad line 'bad.example x'")
