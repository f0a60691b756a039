#!/usr/bin/perl -Tw
# One qpsmtpd 0.94 session on fd 0/1, for tcpserver: what qpsmtpd's own
# per-connection program does (Debian's package ships only the forkserver
# and prefork daemons). Net::DNS reads its resolver from $BENCH_RESOLV_CONF,
# as in qpsmtpd-0.94-forkserver.pl.
use strict;
use IO::Socket::INET;
use Net::DNS;
use Qpsmtpd::TcpServer;

my ($resolv_conf) = ($ENV{BENCH_RESOLV_CONF} || '') =~ m{^(/[\w./-]+)$}
  or die "BENCH_RESOLV_CONF must name a resolv.conf file\n";
Net::DNS::Resolver->new(config_file => $resolv_conf);

delete $ENV{ENV};
$ENV{PATH} = '/bin:/usr/bin';
$| = 1;

# qpsmtpd asks the client socket whether it is still connected
my $client = IO::Socket::INET->new_from_fd(fileno(STDIN), 'r+')
  or die "fd 0 is not a socket: $!\n";
my $session = Qpsmtpd::TcpServer->new();
$session->load_plugins;
$session->start_connection;
$session->run($client);
$session->run_hooks('post-connection');
$session->connection->reset;
