#!/usr/bin/perl

# Redis stops in the middle: requests are answered at once, never hang.
# With "llmsafespace_limit_redis_down refuse" they get a JSON 503; with
# "local" (the default) they are allowed and limited by this gateway's
# own zone.  When Redis is back the gateways use it again by themselves,
# without a reload.

use warnings;
use strict;

use Test::More;

use LSS::Test;

my $tl = LSS::Test->new(workers => 2);
my $tr = LSS::Test->new(workers => 2);

$tl->redis_start();

my @keys = $tl->write_keys_file('keys', ({}) x 6);
$tr->write_file('keys', $tl->read_file('keys'));

my $conf = <<'EOF';
%%TEST_GLOBALS%%
events { }
http {
    %%TEST_GLOBALS_HTTP%%
    llmsafespace_redis REDIS_ADDRESS timeout=1s backoff=50ms:200ms;
    llmsafespace_keys_file %%TESTDIR%%/keys;
    llmsafespace_limit_zone zone=z:1m rate=1r/m burst=2;
    POLICY

    server {
        listen 127.0.0.1:LISTEN_PORT;

        location /api/v1/ {
            llmsafespace_api;
            llmsafespace_limit default zone=z;
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

my $redis = $tl->redis_address();

for my $x ([$tl, port(8080), ''],
    [$tr, port(8081), 'llmsafespace_limit_redis_down refuse;'])
{
    my ($t, $port, $policy) = @$x;
    (my $c = $conf) =~ s/REDIS_ADDRESS/$redis/;
    $c =~ s/LISTEN_PORT/$port/;
    $c =~ s/POLICY/$policy/;
    $t->run($c);
}

# a request that is not answered within 3 s comes back with status 0

sub user {
    my ($t, $k) = @_;
    return $t->get('/api/v1/user', key => $k->{key}, timeout => 3,
        port => $t == $tl ? port(8080) : port(8081));
}

sub health {
    my ($t) = @_;
    return $t->get('/healthz', timeout => 3,
        port => $t == $tl ? port(8080) : port(8081));
}

my ($k1, $k2, $k3, $k4, $k5, $k6) = @keys;

is(user($tl, $k1)->{status}, 200, 'local policy: allowed, Redis up');
is(user($tr, $k1)->{status}, 200, 'refuse policy: allowed, Redis up');

$tl->redis_stop();

# both gateways notice (EOF) and stop using Redis

ok($tl->wait_for(sub { health($tl)->{status} == 503 }, 10),
    'local gateway: /healthz reports redis down');
ok($tr->wait_for(sub { health($tr)->{status} == 503 }, 10),
    'refuse gateway: /healthz reports redis down');

# refuse: JSON 503, answered (within the 3 s bound, not hanging)

my @r = map { user($tr, $k2) } 1 .. 10;
is_deeply([map { $_->{status} } @r], [(503) x 10],
    'refuse: every request answered 503')
    or diag(explain([map { $_->{status} } @r]));
is($r[0]{json}{error}{code}, 'unavailable', 'refuse: JSON code unavailable');
like($r[0]{headers}{'content-type'}, qr!^application/json!,
    'refuse: JSON body');

# local: allowed and limited by the local zone (burst 2: three requests)

@r = map { user($tl, $k2) } 1 .. 4;
is_deeply([map { $_->{status} } @r], [200, 200, 200, 429],
    'local: allowed, then limited locally')
    or diag(explain([map { $_->{status} } @r]));
is($r[3]{json}{error}{code}, 'rate_limited', 'local: JSON 429');
ok($r[3]{headers}{'retry-after'} >= 1, 'local: Retry-After');

# each worker refreshes its metrics slot periodically

sub redis_counter {
    my ($t, $name) = @_;
    my $m = $t->metrics();
    my $sum = 0;
    $sum += $m->{$_} for grep { /^llmsafespace_redis_${name}_total/ } keys %$m;
    return $sum;
}

ok($tl->wait_for(sub { redis_counter($tl, 'errors') > 0 }, 10),
    'metrics: redis errors counted');

# Redis comes back on the same address: no reload needed

$tl->redis_start();

ok($tr->wait_for(sub { user($tr, $k3)->{status} == 200 }, 10),
    'refuse gateway serves again once Redis is back');
ok($tl->wait_for(sub { health($tl)->{status} == 200 }, 10),
    'local gateway: /healthz healthy again');

# ... and the budget is shared through Redis again

@r = map { user($tl, $k4) } 1 .. 3;
is_deeply([map { $_->{status} } @r], [200, 200, 200],
    'k4 budget spent on the local-policy gateway');
is(user($tr, $k4)->{status}, 429, 'the other gateway sees it: shared again');

my $rc = $tl->redis();
ok($rc->exists("lss:rl:z:$k4->{id}"), 'state written to Redis again');
$rc->quit();

ok($tl->wait_for(sub { redis_counter($tl, 'reconnects') > 0 }, 10),
    'metrics: reconnects counted');

$tr->stop();
is(join("\n", $tr->error_log_alerts()), '', 'refuse gateway: no alerts');

$tl->finish();
