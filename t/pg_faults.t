#!/usr/bin/perl

# PostgreSQL faults that do not close the socket:
# - a server that accepts TCP but never answers: the connect timeout fires,
#   /healthz says down, and nginx still quits gracefully;
# - a backend that stops answering (SIGSTOP) on an idle connection: the
#   periodic probe (every 10 s) times out, the connection is made anew.

use warnings;
use strict;

use Test::More;
use IO::Socket::IP;

use LSS::Test;

my $t = LSS::Test->new(workers => 1);

# a listener that never accepts: the kernel completes the handshake, the
# startup packet is never answered

my $mute = IO::Socket::IP->new(LocalHost => '127.0.0.1', LocalPort => 0,
    Listen => 5, Proto => 'tcp') or die "listen: $!\n";
my $mute_port = $mute->sockport();

$t->pg_start();

my $conf = <<"EOF";
%%TEST_GLOBALS%%
events { }
http {
    %%TEST_GLOBALS_HTTP%%
    llmsafespace_postgres "host=127.0.0.1 port=$mute_port user=x dbname=x"
                          connections=1 connect_timeout=300ms
                          backoff=50ms:200ms;

    server {
        listen 127.0.0.1:%%PORT_8080%%;
        location = /healthz { llmsafespace_health; }
    }
}
EOF

$t->run($conf);

ok($t->wait_for(sub { $t->read_file('error.log') =~ /connect timed out/ },
    10), 'a server that never answers: the connect times out');

my $r = $t->get('/healthz');
is($r->{status}, 503, '/healthz says degraded');
ok($r->{json} && !$r->{json}{postgres}{up}, 'postgres down');

$t->stop();
ok(!$t->{stop_timeout}, 'nginx quits gracefully while connecting');

close $mute;

# a backend that stops answering

$conf = <<'EOF';
%%TEST_GLOBALS%%
events { }
http {
    %%TEST_GLOBALS_HTTP%%
    llmsafespace_postgres "%%PG%%" connections=1 timeout=500ms
                          backoff=50ms:200ms;

    server {
        listen 127.0.0.1:%%PORT_8080%%;
        location = /healthz { llmsafespace_health; }
    }
}
EOF

$t->run($conf);

sub pg_up {
    my $r = $t->get('/healthz');
    return $r->{json} && $r->{json}{postgres}{up};
}

ok($t->wait_for(\&pg_up, 10), 'connected');

my $pids = $t->dbh()->selectcol_arrayref(
    q{SELECT pid FROM pg_stat_activity WHERE datname = 'llmsafespace' }
    . q{AND backend_type = 'client backend' AND pid <> pg_backend_pid()});
is(scalar(@$pids), 1, 'one backend serves the gateway');

kill 'STOP', @$pids;

my $found = $t->wait_for(sub {
    $t->read_file('error.log') =~ /health check timed out/ }, 20);

kill 'CONT', @$pids;

ok($found, 'the idle probe notices the backend does not answer');
ok($t->wait_for(\&pg_up, 10), 'and a new connection serves');

$t->finish();
