#!/usr/bin/perl

# GET /metrics: valid Prometheus text exposition whose counters move with
# the requests a client makes (by route class and status code, auth
# failures, rate limited requests, Redis latency) and whose per worker
# gauges follow Redis going down and coming back.

use warnings;
use strict;

use Test::More;

use LSS::Test;

my $t = LSS::Test->new(workers => 2);

$t->redis_start();

my ($alice, $bob) = $t->write_keys_file('keys',
    { role => 'user', user_id => 'usr-alice', user_name => 'alice' },
    { role => 'user', user_id => 'usr-bob', user_name => 'bob' });

$t->run(<<'EOF');
%%TEST_GLOBALS%%
events { }
http {
    %%TEST_GLOBALS_HTTP%%
    llmsafespace_redis %%REDIS%% timeout=1s backoff=50ms:300ms;
    llmsafespace_keys_file %%TESTDIR%%/keys;

    # 3 requests per key, then 429 for a minute
    llmsafespace_limit_zone zone=tight:1m rate=1r/m burst=2;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        location /api/v1/ {
            llmsafespace_api;
            llmsafespace_limit default zone=tight;
        }

        location = /metrics {
            llmsafespace_metrics;
        }
    }
}
EOF

sub val {
    my ($m, $key) = @_;
    return $m->{$key} // 0;
}

# the format first

my $m = $t->metrics();
my $r = $m->{_response};

is($r->{status}, 200, 'metrics answered');
is($r->{headers}{'content-type'}, 'text/plain; version=0.0.4; charset=utf-8',
    'Prometheus text content type');
is($r->{headers}{'cache-control'}, 'no-store', 'not cacheable');

my @bad = grep {
    !/^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* \S/
    && !/^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_]+="[^"]*",?)*\})?
         \ -?[0-9.]+(e[+-]?\d+)?$/x
} split /\n/, $r->{body};
is(join("\n", @bad), '', 'every line is valid exposition');

my @untyped = grep {
    my $family = $_;
    $family =~ s/\{.*//;
    $family =~ s/_(bucket|sum|count)$//
        if !$m->{_type}{$family};
    !$m->{_type}{$family};
} grep { !/^_/ } keys %$m;
is(join(' ', @untyped), '', 'every sample has a TYPE');

for my $family (qw/ llmsafespace_requests_total
    llmsafespace_auth_failures_total llmsafespace_rate_limited_total
    llmsafespace_audit_written_total llmsafespace_audit_dropped_total /)
{
    is($m->{_type}{$family}, 'counter', "$family is a counter");
}

is($m->{_type}{llmsafespace_redis_latency_seconds}, 'histogram',
    'redis latency is a histogram');
is($m->{_type}{llmsafespace_redis_up}, 'gauge', 'redis up is a gauge');
ok(!exists $m->{_type}{llmsafespace_postgres_up},
    'no postgres gauges when postgres is not configured');

$r = $t->request('POST', '/metrics', body => '');
is($r->{status}, 405, 'POST /metrics refused');

# both workers fill their own gauge slot, Redis up in each

my $both = $t->wait_for(sub {
    my $m = $t->metrics();
    return val($m, 'llmsafespace_redis_up{worker="0"}') == 1
        && val($m, 'llmsafespace_redis_up{worker="1"}') == 1 ? $m : undef;
}, 10);
ok($both, 'redis up in both workers');

# counters move with traffic

my $before = $t->metrics();
my %seen;

# alice: within her budget; nobody: 401; bob: over his budget

for (1 .. 3) {
    $seen{$t->get('/api/v1/user', key => $alice->{key})->{status}}++;
}
for (1 .. 4) {
    $seen{$t->get('/api/v1/user')->{status}}++;
}
for (1 .. 6) {
    $seen{$t->get('/api/v1/user', key => $bob->{key})->{status}}++;
}

note('statuses seen: ' . join(', ', map { "$_ x$seen{$_}" } sort keys %seen));

is($seen{401}, 4, 'requests without a key got 401');
ok(($seen{429} // 0) >= 3, 'bob was rate limited');

my $after = $t->metrics();

for my $code (sort keys %seen) {
    my $key = "llmsafespace_requests_total{class=\"default\",code=\"$code\"}";
    my $delta = val($after, $key) - val($before, $key);

    # scrapes answer 200 too: only the other codes are exact

    if ($code == 200) {
        ok($delta >= $seen{$code}, "requests_total code $code moved");
    } else {
        is($delta, $seen{$code}, "requests_total code $code moved by "
            . $seen{$code});
    }
}

is(val($after, 'llmsafespace_auth_failures_total')
    - val($before, 'llmsafespace_auth_failures_total'), 4,
    'auth failures counted');

is(val($after, 'llmsafespace_rate_limited_total{class="default"}')
    - val($before, 'llmsafespace_rate_limited_total{class="default"}'),
    $seen{429} // 0, 'rate limited requests counted by class');

is(val($after, 'llmsafespace_rate_limited_total{class="execute"}'),
    val($before, 'llmsafespace_rate_limited_total{class="execute"}'),
    'other classes unchanged');

# the limiter spoke to Redis: the latency histogram moved, consistently

my $h = 'llmsafespace_redis_latency_seconds';
ok(val($after, "${h}_count") > val($before, "${h}_count"),
    'redis latency observations counted');
is(val($after, "${h}_bucket{le=\"+Inf\"}"), val($after, "${h}_count"),
    '+Inf bucket equals count');

my @les = map { /le="([^"]+)"/ ? $1 : () } grep { /^${h}_bucket/ }
    keys %$after;
my @sorted = sort { ($a eq '+Inf' ? 1e99 : $a) <=> ($b eq '+Inf' ? 1e99 : $b) }
    @les;
my @cum = map { val($after, "${h}_bucket{le=\"$_\"}") } @sorted;
ok(!grep({ $cum[$_] < $cum[$_ - 1] } 1 .. $#cum), 'buckets are cumulative');
ok(val($after, "${h}_sum") >= 0, 'sum present');

# Redis down: the gauges follow, errors are counted, then it recovers

$t->redis_stop();

my $down = $t->wait_for(sub {
    my $m = $t->metrics();
    return val($m, 'llmsafespace_redis_up{worker="0"}') == 0
        && val($m, 'llmsafespace_redis_up{worker="1"}') == 0 ? $m : undef;
}, 10);
ok($down, 'redis_up 0 in every worker while redis is down');

my $rc = 'llmsafespace_redis_reconnects_total';
my $reconnects = val($down // $after, "${rc}{worker=\"0\"}")
    + val($down // $after, "${rc}{worker=\"1\"}");

$t->redis_start();

my $up = $t->wait_for(sub {
    my $m = $t->metrics();
    return val($m, 'llmsafespace_redis_up{worker="0"}') == 1
        && val($m, 'llmsafespace_redis_up{worker="1"}') == 1 ? $m : undef;
}, 10);
ok($up, 'redis_up 1 again after redis returns');

ok(val($up // {}, 'llmsafespace_redis_reconnects_total{worker="0"}')
    + val($up // {}, 'llmsafespace_redis_reconnects_total{worker="1"}')
    > $reconnects, 'reconnects counted');

$t->finish();
