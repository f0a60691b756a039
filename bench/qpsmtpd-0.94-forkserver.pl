#!/usr/bin/perl -Tw
# Debian's qpsmtpd-forkserver (qpsmtpd 0.94), unchanged, with Net::DNS's
# default resolver read from the file named by $BENCH_RESOLV_CONF instead of
# /etc/resolv.conf, so its lookups (the reverse lookup it makes for every
# connection, the dnsbl plugin's queries) go to the benchmark's DNS server
# on 127.0.0.1. Net::DNS ignores RES_NAMESERVERS/RES_OPTIONS under taint
# mode, but the first Resolver built from a config file becomes the default
# for every later Resolver->new, untainted.
use strict;
use Net::DNS;

my ($resolv_conf) = ($ENV{BENCH_RESOLV_CONF} || '') =~ m{^(/[\w./-]+)$}
  or die "BENCH_RESOLV_CONF must name a resolv.conf file\n";
Net::DNS::Resolver->new(config_file => $resolv_conf);

$0 = '/usr/bin/qpsmtpd-forkserver';
do '/usr/bin/qpsmtpd-forkserver';
die $@ if $@;
