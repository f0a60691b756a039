"""loadcheck - refuse connections while the system load is too high.

At connect the 1-minute load average is compared with ``max_load``; above
it the client gets

  450 Server load too high, please try again later.

and the connection is closed (LOGERROR ``local load too high: <load>``).
Otherwise the session goes on (LOGDEBUG ``continuing with load: <load>``).

The load is read from ``/proc/loadavg`` (Linux), else from the C library's
getloadavg(3) (BSD, macOS), else from the output of the ``uptime`` command,
and is cached for ``cache_time`` seconds per process. When none of these
works the plugin logs LOGERROR ``unable to acquire system load`` at start-up
and registers no hook.

Arguments (``key value`` pairs):

  max_load <n>      highest 1-minute load that still gets service (default 7)
  cache_time <s>    seconds a measured load is reused (default 10)
  uptime <path>     the uptime program (default /usr/bin/uptime)

Example ``config/plugins`` lines::

  loadcheck
  loadcheck max_load 12 cache_time 30
"""

import os
import re
import subprocess
import time

from qpsmtpd.constants import DECLINED, DENYSOFT, LOGDEBUG, LOGERROR
from qpsmtpd.plugin import Plugin, PluginError

PROC_LOADAVG = "/proc/loadavg"
_UPTIME_LOAD = re.compile(r"aver\S+: (\d+[.,]\d+)")


class Loadcheck(Plugin):
    def register(self, *args):
        self.args = self.parse_args(args, {"max_load": "7", "cache_time": "10",
                                           "uptime": "/usr/bin/uptime"})
        try:
            self.max_load = float(self.args["max_load"])
            self.cache_time = float(self.args["cache_time"])
        except ValueError:
            raise PluginError(f"{self.config_name}: max_load and cache_time "
                              "must be numbers") from None
        self.read_load = self.load_method()
        if self.read_load is None:
            self.log(LOGERROR, "unable to acquire system load")
            return False
        self._load = -1.0
        self._measured = None

    def hook_connect(self, session):
        now = time.monotonic()
        if self._measured is None or now > self._measured + self.cache_time:
            load = self.read_load()
            if load is not None:
                self._load, self._measured = load, now
        if self._load > self.max_load:
            self.log(LOGERROR, f"local load too high: {self._load}")
            return DENYSOFT, "Server load too high, please try again later."
        self.log(LOGDEBUG, f"continuing with load: {self._load}")
        return DECLINED

    def load_method(self):
        """The first way of reading the load that works here, or None."""
        if os.access(PROC_LOADAVG, os.R_OK):
            return self.proc_loadavg
        if hasattr(os, "getloadavg"):
            try:
                os.getloadavg()
                return self.getloadavg
            except OSError:
                pass
        if os.access(self.args["uptime"], os.X_OK):
            return self.uptime_load
        return None

    def proc_loadavg(self):
        try:
            with open(PROC_LOADAVG) as handle:
                load = float(handle.read().split()[0])
        except (OSError, ValueError, IndexError) as exc:
            self.log(LOGERROR, f"error, cannot read {PROC_LOADAVG}: {exc}")
            return None
        self.log(LOGDEBUG, f"{PROC_LOADAVG} reported: {load}")
        return load

    def getloadavg(self):
        try:
            load = os.getloadavg()[0]
        except OSError as exc:
            self.log(LOGERROR, f"error, getloadavg failed: {exc}")
            return None
        self.log(LOGDEBUG, f"getloadavg reported: {load}")
        return load

    def uptime_load(self):
        command = self.args["uptime"]
        try:
            output = subprocess.run([command], capture_output=True, timeout=5,
                                    text=True, errors="replace").stdout
        except (OSError, subprocess.SubprocessError) as exc:
            self.log(LOGERROR, f"error, {command} failed: {exc}")
            return None
        load = parse_uptime(output)
        if load is not None:
            self.log(LOGDEBUG, f"{command} reported: {load}")
        return load


def parse_uptime(output):
    """The 1-minute load from uptime(1) output, or None.

    ``10:33AM  up  2:06, 1 user, load averages: 6.55, 3.76, 2.48`` -> 6.55
    """
    match = _UPTIME_LOAD.search(output)
    return float(match.group(1).replace(",", ".")) if match else None
