#!/usr/bin/perl

# Cluster-wide rate limiting: two gateways (two nginx instances, two
# prefixes) sharing one Redis share one budget per key, kept by an atomic
# Lua script on Redis' clock, in keys that expire by themselves.

use warnings;
use strict;

use Test::More;

use LSS::Test;

my $ga = LSS::Test->new(workers => 2);
my $gb = LSS::Test->new(workers => 1);

$ga->redis_start();

my @keys = $ga->write_keys_file('keys', {}, {}, {});
$gb->write_file('keys', $ga->read_file('keys'));

my $conf = <<'EOF';
%%TEST_GLOBALS%%
events { }
http {
    %%TEST_GLOBALS_HTTP%%
    llmsafespace_redis REDIS_ADDRESS timeout=2s backoff=50ms:300ms;
    llmsafespace_keys_file %%TESTDIR%%/keys;
    llmsafespace_limit_zone zone=shared:1m rate=1r/m burst=2;
    llmsafespace_limit_redis_down refuse;

    server {
        listen 127.0.0.1:LISTEN_PORT;

        location /api/v1/ {
            llmsafespace_api;
            llmsafespace_limit default zone=shared;
        }
    }
}
EOF

my $redis = $ga->redis_address();

for my $x ([$ga, port(8080)], [$gb, port(8081)]) {
    my ($t, $port) = @$x;
    (my $c = $conf) =~ s/REDIS_ADDRESS/$redis/;
    $c =~ s/LISTEN_PORT/$port/;
    $t->run($c);
}

sub user {
    my ($t, $k) = @_;
    return $t->get('/api/v1/user', key => $k->{key},
        port => $t == $ga ? port(8080) : port(8081));
}

my ($k1, $k2, $k3) = @keys;

# gateway A spends the whole budget of k1 (burst 2: three requests)

my @r = map { user($ga, $k1) } 1 .. 3;
is_deeply([map { $_->{status} } @r], [200, 200, 200], 'A: budget spent');
is($r[2]{headers}{'ratelimit-remaining'}, 0, 'A: nothing remaining');

# gateway B has never seen k1 (its own zone is fresh) yet refuses it

my $r = user($gb, $k1);
is($r->{status}, 429, 'B refuses k1: the budget is shared');
is($r->{json}{error}{code}, 'rate_limited', 'B: JSON rate_limited');
ok($r->{headers}{'retry-after'} >= 1 && $r->{headers}{'retry-after'} <= 60,
    'B: Retry-After from the shared state')
    or diag($r->{headers}{'retry-after'});
is($r->{headers}{'ratelimit-remaining'}, 0, 'B: RateLimit-Remaining 0');
is($r->{headers}{'ratelimit-limit'}, 3, 'B: RateLimit-Limit 3');

# the other way round: B spends part of k2, A sees what is left

is(user($gb, $k2)->{status}, 200, 'B: k2 allowed');
is(user($gb, $k2)->{headers}{'ratelimit-remaining'}, 0 + 1,
    'B: k2 second request, one left');
$r = user($ga, $k2);
is($r->{status}, 200, 'A: k2 third request allowed');
is($r->{headers}{'ratelimit-remaining'}, 0, 'A: k2 nothing left after B');
is(user($ga, $k2)->{status}, 429, 'A: k2 fourth refused');

# state in Redis: one key per zone and API key, with a TTL

my $rc = $ga->redis();
my $pttl = $rc->pttl("lss:rl:shared:$k1->{id}");
ok($pttl > 0 && $pttl <= 180000, 'Redis key expires by itself')
    or diag($pttl);
ok(!grep({ !/^lss:rl:shared:/ } $rc->keys('*')), 'no other keys written');

# Redis forgot the script (restart, SCRIPT FLUSH): EVALSHA fails with
# NOSCRIPT, the gateway falls back to EVAL and the budget still works

$rc->script_flush();

$r = user($ga, $k3);
is($r->{status}, 200, 'allowed after SCRIPT FLUSH');
is($r->{headers}{'ratelimit-remaining'}, 2, 'k3 counted');
ok($rc->exists("lss:rl:shared:$k3->{id}"), 'k3 state in Redis');
is(user($gb, $k1)->{status}, 429, 'k1 still refused');

$rc->quit();

$gb->stop();
is(join("\n", $gb->error_log_alerts()), '', 'B: no alerts in error.log');

$ga->finish();
