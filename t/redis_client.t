#!/usr/bin/perl

# The gateway's Redis client on a healthy server: AUTH and SELECT on
# connect, many concurrent requests pipelined on each worker's single
# connection (every one answered), and a clean quit.

use warnings;
use strict;

use Test::More;

use LSS::Test;

###############################################################################
# TCP, password and database

my $t = LSS::Test->new(workers => 2);

$t->redis_start(password => 's3cret pass');

my @keys = $t->write_keys_file('keys', ({}) x 4);

$t->run(<<'EOF');
%%TEST_GLOBALS%%
events { }
http {
    %%TEST_GLOBALS_HTTP%%
    llmsafespace_keys_file %%TESTDIR%%/keys;
    llmsafespace_redis %%REDIS%% "password=%%REDIS_PASSWORD%%" db=3
                       timeout=5s queue=4096;
    llmsafespace_limit_redis_down refuse;
    llmsafespace_limit_zone zone=slow:1m rate=1r/m burst=5;
    llmsafespace_limit_zone zone=busy:1m rate=100000r/s burst=100000;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        location /api/v1/ {
            llmsafespace_api;
            llmsafespace_limit default zone=slow;
        }

        location = /healthz {
            llmsafespace_health;
        }

        location = /metrics {
            llmsafespace_metrics;
        }
    }

    # the same API on another port, limited by zone "busy"
    server {
        listen 127.0.0.1:%%PORT_8081%%;

        location /api/v1/ {
            llmsafespace_api;
            llmsafespace_limit default zone=busy;
        }
    }
}
EOF

my $r = $t->wait_for(sub {
    my $x = $t->get('/healthz');
    return $x->{status} == 200 ? $x : undef;
}, 10);
ok($r, 'healthy: authenticated to Redis');

my $k = $keys[0];

$r = $t->get('/api/v1/user', key => $k->{key});
is($r->{status}, 200, 'request allowed through Redis (refuse policy)');
is($r->{headers}{'ratelimit-limit'}, 6, 'limit announced');

my $rc = $t->redis();
$rc->select(3);
ok($rc->exists("lss:rl:slow:$k->{id}"), 'state written in db 3');
$rc->select(0);
ok(!$rc->exists("lss:rl:slow:$k->{id}"), 'nothing in db 0');

# pipelining: many requests in parallel, each one needs its own EVALSHA

my %before = $rc->info('commandstats')->%*;
my ($calls_before) = ($before{cmdstat_evalsha} // 'calls=0') =~ /calls=(\d+)/;

my $n = 2000;
my @res = $t->parallel(count => $n, concurrency => 64, timeout => 120,
    port => port(8081),
    request => sub {
        my $key = $keys[$_[0] % @keys];
        return ('GET', '/api/v1/user',
            { Authorization => "Bearer $key->{key}" });
    });

my @bad = grep { $_->{status} != 200 } @res;
is(scalar @bad, 0, "$n concurrent requests all answered 200")
    or diag(explain([@bad[0 .. ($#bad < 4 ? $#bad : 4)]]));

my %after = $rc->info('commandstats')->%*;
my ($calls_after) = ($after{cmdstat_evalsha} // 'calls=0') =~ /calls=(\d+)/;
cmp_ok($calls_after - $calls_before, '>=', $n,
    'every request was checked in Redis');

my $clients = $rc->client_list();
my @ours = grep { /\bdb=3\b/ } split /\n/, $clients;
cmp_ok(scalar @ours, '<=', 2, 'one connection per worker, no more')
    or diag($clients);

my $m = $t->wait_for(sub {
    my $m = $t->metrics();
    my @up = grep { /^llmsafespace_redis_up\{/ } keys %$m;
    return (@up == 2 && !grep { !$m->{$_} } @up) ? $m : undef;
}, 10);
ok($m, 'metrics: redis up in both workers');
ok(defined $m->{'llmsafespace_redis_latency_seconds_count'}
    && $m->{'llmsafespace_redis_latency_seconds_count'} >= 1,
    'metrics: Redis latency observed');

$rc->quit();

$t->finish();
