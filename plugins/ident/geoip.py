"""ident/geoip - where in the world is the client?

Looks the client's IP up in a MaxMind database (GeoIP2/GeoLite2 ``.mmdb``,
City or Country edition) at connect and leaves connection notes other
plugins use (greylisting's ``geoip`` exemption, karma):

  geoip_country       two-letter country code (``DE``)
  geoip_country_name  English country name (``Germany``)
  geoip_continent     two-letter continent code (``EU``)
  geoip_city          English city name (City database only)
  geoip_asn           autonomous system number (from GeoLite2-ASN.mmdb, or
                      the City database's traits when it has them)
  geoip_distance      kilometres from this server (City database and
                      ``distance`` or ``location`` given), great circle on a
                      sphere of radius 6378 km, rounded

A client farther away than ``too_far`` km costs 1 karma point. Loopback
clients are not looked up. When the database has no entry:
``skip, no results``.

The log line (LOGINFO) is ``<continent>, <country>, <country name>[,
<city>][, <distance> km]``, e.g. ``EU, DE, Germany, Berlin, 7315 km``.

Arguments (defaults):

  db_dir /usr/local/share/GeoIP   where GeoLite2-City.mmdb (preferred) or
                                  GeoLite2-Country.mmdb, and
                                  GeoLite2-ASN.mmdb, are looked for
  db_file <path>                  one .mmdb file instead (City or Country)
  distance <ip>                   this server's public IP: its location in
                                  the database is "here"
  location <latitude>,<longitude> "here" given directly (wins over distance)
  too_far <km>                    karma -1 beyond this distance
  add_headers true                X-GeoIP-Country, -Continent, -City, -ASN
                                  headers on each message (old ones removed)
  loglevel

With no usable database the plugin logs ``error, ...`` at start-up and stays
inactive.

Differences from qpsmtpd 1.0: only MaxMind DB (``.mmdb``) files are read
(the legacy ``.dat`` format is not supported); the distance and ``too_far``
work with GeoIP2 databases (1.0 computed them only with the legacy module);
``db_file`` and ``location`` are ours.

Example ``config/plugins`` line (early, so later plugins see the notes)::

  ident/geoip db_dir /var/lib/GeoIP distance 192.0.2.25 too_far 8000
"""

import math
import os

from qpsmtpd.constants import DECLINED, LOGDEBUG, LOGINFO
from qpsmtpd.plugin import Plugin, PluginError

try:
    import geoip2.database
    import geoip2.errors
except ImportError:   # reported at start-up; the plugin stays inactive
    geoip2 = None

EARTH_RADIUS_KM = 6378
HEADERS = ("Country", "Continent", "City", "ASN")


class GeoIP(Plugin):
    def register(self, *args):
        self.args = self.parse_args(args, {"db_dir": "/usr/local/share/GeoIP",
                                           "add_headers": "true"})
        if geoip2 is None:
            self.log_error("could not load geoip2 (pip install geoip2)")
            return False
        self.location_db = self.open_location_db()
        if self.location_db is None:
            return False
        self.asn_db = self.open(os.path.join(self.args["db_dir"], "GeoLite2-ASN.mmdb"))
        self.too_far = _number(self.args.get("too_far"), "too_far")
        self.here = self.my_location()
        if str(self.args["add_headers"]).lower() not in ("false", "0", "no"):
            self.register_hook("data_post", self.add_headers)

    def open_location_db(self):
        if self.args.get("db_file"):
            candidates = [self.args["db_file"]]
        else:
            candidates = [os.path.join(self.args["db_dir"], name)
                          for name in ("GeoLite2-City.mmdb", "GeoIP2-City.mmdb",
                                       "GeoLite2-Country.mmdb", "GeoIP2-Country.mmdb")]
        for path in candidates:
            reader = self.open(path)
            if reader is not None:
                return reader
        self.log_error(f"no GeoIP2 database found (tried {', '.join(candidates)})")
        return None

    def open(self, path):
        if not os.path.isfile(path):
            return None
        try:
            reader = geoip2.database.Reader(path)
        except (OSError, ValueError, RuntimeError) as exc:   # RuntimeError: not a MaxMind DB
            self.log_error(f"cannot read {path}: {exc}")
            return None
        self.log(LOGDEBUG, f"using {path} ({reader.metadata().database_type})")
        return reader

    def my_location(self):
        location = self.args.get("location")
        if location:
            try:
                latitude, longitude = (float(x) for x in location.split(","))
            except ValueError as exc:
                raise PluginError(f"ident/geoip: location must be <latitude>,<longitude>: "
                                  f"{location!r}") from exc
            return latitude, longitude
        ip = self.args.get("distance")
        if not ip:
            return None
        record = self.lookup(ip)
        latitude, longitude = _coordinates(record)
        if latitude is None:
            self.log_error(f"no location for my address {ip} in the database")
            return None
        return latitude, longitude

    # -- hooks, in the order they fire ---------------------------------------------

    def hook_connect(self, session):
        connection = session.connection
        ip = self.normal_ip(connection.remote_ip)   # ::ffff:192.0.2.1 -> 192.0.2.1
        if self.is_localhost(ip):
            self.log(LOGDEBUG, "skip, localhost")
            return DECLINED
        record = self.lookup(ip)
        country = getattr(getattr(record, "country", None), "iso_code", None)
        if not country:
            self.log_skip("no results")
            return DECLINED
        notes = connection.notes
        notes["geoip_country"] = country
        parts = []
        continent = record.continent.code
        if continent:
            notes["geoip_continent"] = continent
            parts.append(continent)
        parts.append(country)
        if record.country.name:
            notes["geoip_country_name"] = record.country.name
            parts.append(record.country.name)
        city = getattr(getattr(record, "city", None), "name", None)
        if city:
            notes["geoip_city"] = city
            parts.append(city)
        asn = self.asn(ip, record)
        if asn:
            notes["geoip_asn"] = asn
        distance = self.distance(record)
        if distance is not None:
            notes["geoip_distance"] = distance
            parts.append(f"{distance} km")
        self.log(LOGINFO, ", ".join(parts))
        if distance is not None and self.too_far and distance > self.too_far:
            self.adjust_karma(session, -1)
        return DECLINED

    def add_headers(self, session):
        notes = session.connection.notes
        header = session.transaction.header
        if header is None:
            return DECLINED
        for name in HEADERS:
            value = notes.get(f"geoip_{name.lower()}")
            header.delete(f"X-GeoIP-{name}")
            if value:
                header.add(f"X-GeoIP-{name}", str(value), 0)
        return DECLINED

    # -- helpers ---------------------------------------------------------------------

    def lookup(self, ip):
        """The City or Country record for ``ip``, or None."""
        reader = self.location_db
        kind = reader.metadata().database_type
        try:
            return reader.city(ip) if "City" in kind else reader.country(ip)
        except (geoip2.errors.AddressNotFoundError, ValueError):
            return None

    def asn(self, ip, record):
        if self.asn_db is not None:
            try:
                return self.asn_db.asn(ip).autonomous_system_number
            except (geoip2.errors.AddressNotFoundError, ValueError, TypeError):
                return None
        traits = getattr(record, "traits", None)
        return getattr(traits, "autonomous_system_number", None)

    def distance(self, record):
        if self.here is None:
            return None
        latitude, longitude = _coordinates(record)
        if latitude is None:
            return None
        return round(great_circle_km(self.here, (latitude, longitude)))


def great_circle_km(here, there):
    """Distance on a sphere of radius ``EARTH_RADIUS_KM`` (haversine)."""
    lat1, lon1 = (math.radians(x) for x in here)
    lat2, lon2 = (math.radians(x) for x in there)
    a = (math.sin((lat2 - lat1) / 2) ** 2
         + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2)
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def _coordinates(record):
    location = getattr(record, "location", None)
    latitude = getattr(location, "latitude", None)
    longitude = getattr(location, "longitude", None)
    if latitude is None or longitude is None:
        return None, None
    return latitude, longitude


def _number(value, name):
    if value in (None, ""):
        return None
    try:
        return float(value)
    except ValueError as exc:
        raise PluginError(f"ident/geoip: {name} must be a number: {value!r}") from exc
