#!/bin/sh
# What the benchmark needs besides Python, installed when run as root on
# Debian: postfix (for smtp-source and smtp-sink), qpsmtpd (Debian's 0.94,
# the reference) and ucspi-tcp (tcpserver, for W6).
#
# Postfix is configured "No configuration", so it never starts a mail
# service; qpsmtpd's package leaves its daemon disabled. Both services are
# stopped and disabled again here in case an earlier configuration enabled
# them: the benchmark runs its own copies on ephemeral loopback ports and
# nothing of it listens on port 25. Note that installing postfix replaces
# another MTA (exim4) if one is installed.
#
# Without root (or without apt-get) it only says what is missing; the
# benchmark then runs without the missing references.

missing=""
[ -x /usr/sbin/smtp-source ] && [ -x /usr/sbin/smtp-sink ] || missing="$missing postfix"
[ -x /usr/bin/qpsmtpd-forkserver ] || missing="$missing qpsmtpd"
[ -x /usr/bin/tcpserver ] || missing="$missing ucspi-tcp"
[ -z "$missing" ] && exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "bench: not installed:$missing (install as root); those parts are skipped" >&2
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
echo "bench: installing$missing"
# shellcheck disable=SC2086  # the package list is meant to split
apt-get install -y -q --no-install-recommends $missing >/dev/null 2>&1 || {
    apt-get update -q >/dev/null &&
    apt-get install -y -q --no-install-recommends $missing >/dev/null
} || { echo "bench: apt-get install$missing failed" >&2; exit 1; }

for service in postfix qpsmtpd; do
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now "$service" >/dev/null 2>&1 || true
    else
        service "$service" stop >/dev/null 2>&1 || true
        update-rc.d "$service" disable >/dev/null 2>&1 || true
    fi
done
exit 0
