"""ident/geoip against MaxMind DB files the tests write with mmdb-writer:
notes, log line, distance from the site, too_far karma, headers, Country
and ASN editions, and the ways it can go wrong."""

import math

import pytest

from conftest import PLUGIN_DIR, TEST_PLUGINS
from qpsmtpd.plugin import PluginError
from store_fixtures import make_mmdb

BERLIN = (52.52, 13.40)
TOKYO = (35.68, 139.69)
NETWORKS = {
    "192.0.2.0/24": ("DE", "Germany", "EU", "Berlin", *BERLIN),
    "198.51.100.0/24": ("JP", "Japan", "AS", "Tokyo", *TOKYO),
    "2001:db8::/32": ("FR", "France", "EU", None, 48.86, 2.35),
    "203.0.113.0/24": ("BR", "Brazil", "SA", None, None, None),
}


def spherical_km(a, b, radius=6378):
    """Law of cosines, independent of the plugin's haversine."""
    (lat1, lon1), (lat2, lon2) = [(math.radians(x), math.radians(y)) for x, y in (a, b)]
    return radius * math.acos(math.sin(lat1) * math.sin(lat2)
                              + math.cos(lat1) * math.cos(lat2) * math.cos(lon2 - lon1))


@pytest.fixture
def geo_dir(tmp_path):
    directory = tmp_path / "GeoIP"
    directory.mkdir()
    make_mmdb(directory / "GeoLite2-City.mmdb", NETWORKS)
    return directory


@pytest.fixture
def connect(make_app, smtp_session, tmp_path):
    def factory(line, remote_ip="198.51.100.7", extra=(), **connection):
        app = make_app([line, *extra, "rcpt_ok", f"capture {tmp_path / 'queue'}"],
                       {"rcpthosts": ["example.org"]}, plugin_dirs=[TEST_PLUGINS, PLUGIN_DIR])
        return smtp_session(app=app, remote_ip=remote_ip, **connection)
    return factory


def notes(client):
    return client.session.connection.notes


def test_city_lookup_with_distance(connect, geo_dir):
    client = connect(f"ident/geoip db_dir {geo_dir} distance 192.0.2.25")
    expected = round(spherical_km(BERLIN, TOKYO))
    n = notes(client)
    assert (n["geoip_country"], n["geoip_country_name"], n["geoip_continent"],
            n["geoip_city"]) == ("JP", "Japan", "AS", "Tokyo")
    assert abs(n["geoip_distance"] - expected) <= 1
    assert 8900 < n["geoip_distance"] < 9000
    assert client.log_contains(f"(connect) ident::geoip: AS, JP, Japan, Tokyo, "
                               f"{n['geoip_distance']} km")
    assert "karma" not in n


def test_too_far_costs_karma(connect, geo_dir):
    client = connect(f"ident/geoip db_dir {geo_dir} location {BERLIN[0]},{BERLIN[1]} "
                     f"too_far 5000")
    assert notes(client)["karma"] == -1
    near = connect(f"ident/geoip db_dir {geo_dir} location 52.52,13.40 too_far 5000",
                   remote_ip="192.0.2.10")
    assert notes(near)["geoip_distance"] == 0
    assert "karma" not in notes(near)


def test_ipv6_and_ipv4_mapped_clients(connect, geo_dir):
    client = connect(f"ident/geoip db_dir {geo_dir} location 52.52,13.40",
                     remote_ip="2001:db8::25")
    assert notes(client)["geoip_country"] == "FR"
    assert abs(notes(client)["geoip_distance"] - round(spherical_km(BERLIN, (48.86, 2.35)))) <= 1
    mapped = connect(f"ident/geoip db_dir {geo_dir}", remote_ip="::ffff:192.0.2.9")
    assert notes(mapped)["geoip_country"] == "DE"


def test_no_location_means_no_distance(connect, geo_dir):
    client = connect(f"ident/geoip db_dir {geo_dir} location 52.52,13.40",
                     remote_ip="203.0.113.5")
    assert notes(client)["geoip_country"] == "BR"
    assert "geoip_distance" not in notes(client)
    assert client.log_contains("ident::geoip: SA, BR, Brazil")


@pytest.mark.parametrize("ip, line", [("192.0.2.250", None), ("10.1.2.3", "skip, no results"),
                                      ("127.0.0.1", "skip, localhost")])
def test_unknown_and_local_clients(connect, geo_dir, ip, line):
    client = connect(f"ident/geoip db_dir {geo_dir}", remote_ip=ip)
    if line:
        assert "geoip_country" not in notes(client)
        assert client.log_contains(f"ident::geoip: {line}")


def test_headers(connect, geo_dir, tmp_path):
    client = connect(f"ident/geoip db_dir {geo_dir}")
    reply = client.send_message("a@example.net", ["b@example.org"],
                                "X-GeoIP-Country: XX\r\nSubject: x\r\n\r\nbody\r\n.\r\n")
    assert reply.code == 250
    message = (tmp_path / "queue" / "0.eml").read_bytes()
    head = message.split(b"\n\n")[0]
    assert b"X-GeoIP-Country: JP\n" in head
    assert b"X-GeoIP-Continent: AS\n" in head
    assert b"X-GeoIP-City: Tokyo\n" in head
    assert b"X-GeoIP-Country: XX" not in head
    assert b"X-GeoIP-ASN" not in head


def test_headers_can_be_turned_off(connect, geo_dir, tmp_path):
    client = connect(f"ident/geoip db_dir {geo_dir} add_headers false")
    client.send_message("a@example.net", ["b@example.org"], "Subject: x\r\n\r\nb\r\n.\r\n")
    assert b"X-GeoIP" not in (tmp_path / "queue" / "0.eml").read_bytes()


def test_country_database_and_asn_database(connect, tmp_path):
    directory = tmp_path / "country"
    directory.mkdir()
    make_mmdb(directory / "GeoLite2-Country.mmdb", NETWORKS, "GeoLite2-Country")
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet
    writer = MMDBWriter(ip_version=6, database_type="GeoLite2-ASN", ipv4_compatible=True)
    writer.insert_network(IPSet(["198.51.100.0/24"]),
                          {"autonomous_system_number": 64500,
                           "autonomous_system_organization": "Example Net"})
    writer.to_db_file(str(directory / "GeoLite2-ASN.mmdb"))
    client = connect(f"ident/geoip db_dir {directory} location 52.52,13.40")
    n = notes(client)
    assert n["geoip_country"] == "JP" and n["geoip_asn"] == 64500
    assert "geoip_city" not in n and "geoip_distance" not in n


def test_db_file_argument(connect, tmp_path):
    path = make_mmdb(tmp_path / "custom.mmdb", NETWORKS)
    client = connect(f"ident/geoip db_file {path}")
    assert notes(client)["geoip_country"] == "JP"


def test_missing_database_disables_the_plugin(connect, tmp_path):
    client = connect(f"ident/geoip db_dir {tmp_path / 'nothing'}")
    assert client.greeting.code == 220
    assert "geoip_country" not in notes(client)
    assert client.log_contains("ident::geoip: error, no GeoIP2 database found")


def test_corrupt_database_is_an_error_not_a_crash(connect, tmp_path):
    bad = tmp_path / "bad.mmdb"
    bad.write_bytes(b"\x00garbage" * 200)
    client = connect(f"ident/geoip db_file {bad}")
    assert client.greeting.code == 220
    assert client.log_contains("ident::geoip: error, cannot read")


@pytest.mark.parametrize("args", ["location north", "location 1,2,3", "too_far far",
                                  "distance"])
def test_bad_arguments_stop_the_start(make_app, geo_dir, args):
    with pytest.raises(PluginError):
        make_app([f"ident/geoip db_dir {geo_dir} {args}"])


def test_my_address_unknown_to_the_database(connect, geo_dir):
    client = connect(f"ident/geoip db_dir {geo_dir} distance 10.0.0.1")
    assert "geoip_distance" not in notes(client)
    assert client.log_contains("error, no location for my address 10.0.0.1 in the database")
