#!/usr/bin/perl

# The gateway's PostgreSQL client: it serves API key lookups, answers 503 at
# once while PostgreSQL is down, comes back by itself when PostgreSQL
# returns (no reload), and a query past its timeout gets a clean 503 while
# the connection is made anew and serves the next request.

use warnings;
use strict;

use Test::More;
use Time::HiRes qw/ time /;

use LSS::Test;

my $t = LSS::Test->new(workers => 1);

$t->pg_start();

my $conf = <<'EOF';
%%TEST_GLOBALS%%
events { }
http {
    %%TEST_GLOBALS_HTTP%%
    llmsafespace_postgres "%%PG%%" connections=2 connect_timeout=1s
                          timeout=1s backoff=50ms:300ms;
    llmsafespace_key_cache zone=keys:1m ttl=60s stale=10m;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        location /api/v1/ {
            llmsafespace_api;
        }

        location = /healthz {
            llmsafespace_health;
        }

        location = /metrics {
            llmsafespace_metrics;
        }
    }
}
EOF

my $uid = $t->create_user(name => 'alice', role => 'user');

# a key the gateway has never seen: its lookup is a query, not a cache hit

sub new_key {
    my $k = $t->make_key();
    $t->dbh()->do('INSERT INTO api_keys (id, user_id, secret_hash, name) '
        . 'VALUES (?, ?, ?, ?)', undef, $k->{id}, $uid, $k->{hash}, 'test');
    return $k;
}

sub whoami {
    my ($k) = @_;
    return $t->get('/api/v1/user', key => $k->{key});
}

sub pg_up {
    my $r = $t->get('/healthz');
    return $r->{json} && $r->{json}{postgres}
        && $r->{json}{postgres}{up} ? 1 : 0;
}

$t->run($conf);

my @workers = $t->worker_pids();

ok($t->wait_for(\&pg_up, 10), 'connected: /healthz says postgres up');

my $k = new_key();
my $r = whoami($k);
is($r->{status}, 200, 'a key is looked up in PostgreSQL');
is($r->{json} && $r->{json}{name}, 'alice', 'and names its user');

$r = $t->get('/api/v1/user', key => 'lsp_0123456789abcdef_'
    . 'A' x 32);
is($r->{status}, 401, 'an unknown key is refused');

# PostgreSQL goes away

$t->pg_stop();

ok($t->wait_for(sub { !pg_up() }, 10), '/healthz notices postgres is down');
is($t->get('/healthz')->{status}, 503, '/healthz answers 503');

# new keys cannot be checked now: 503 at once, not after the query timeout

my @statuses;
for (1 .. 5) {
    $r = whoami({ key => 'lsp_' . join('', map { ('a' .. 'z')[rand 26] }
        1 .. 16) . '_' . 'B' x 32 });
    push @statuses, $r->{status};
}
is_deeply(\@statuses, [ (503) x 5 ], 'lookups while down answer 503');
is($r->{json} && $r->{json}{error}{code}, 'unavailable',
    'with a JSON "unavailable" error');

# ... and it comes back by itself

$t->pg_start();

ok($t->wait_for(\&pg_up, 10), 'reconnected without reload');

$k = new_key();
$r = $t->wait_for(sub { my $r = whoami($k); $r->{status} == 200 && $r }, 5);
ok($r, 'lookups work again');
is_deeply([ $t->worker_pids() ], \@workers, 'same worker, no restart');

# a query past its timeout: the table is locked by another session

my $lock = $t->pg_dbh();
$lock->begin_work();
$lock->do('LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE');

# (a key inserted now would wait for the lock too: use an unknown one)
$r = whoami({ key => 'lsp_' . 'z' x 16 . '_' . 'C' x 32 });
is($r->{status}, 503, 'a query past the timeout answers 503');
is($r->{json} && $r->{json}{error}{code}, 'unavailable', 'as JSON');

like($t->read_file('error.log'), qr/query timed out after 1000 ms/,
    'the timeout is logged');

$lock->rollback();
$lock->disconnect();

# the connection was made anew and serves the next lookup

$k = new_key();
$r = $t->wait_for(sub { my $r = whoami($k); $r->{status} == 200 && $r }, 5);
ok($r, 'the client recovers after a timeout');

my $m = $t->metrics();
cmp_ok($m->{'llmsafespace_postgres_timeouts_total{worker="0"}'} // 0,
    '>=', 1, 'the timeout is counted in /metrics');
cmp_ok($m->{'llmsafespace_postgres_reconnects_total{worker="0"}'} // 0,
    '>=', 1, 'and so are reconnects');

unlike($t->read_file('error.log'), qr/password|secret/i,
    'no secret in the error log');

# a reload: the old worker's idle connections close, so it exits promptly
# (bounded wait; nothing else keeps it)

my ($old) = $t->worker_pids();
$t->reload();

ok($t->wait_for(sub { !grep { $_ == $old } $t->worker_pids() }, 10),
    'the old worker exits after a reload');
ok($t->wait_for(\&pg_up, 10), 'the new worker connects');

$t->finish();
