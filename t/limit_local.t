#!/usr/bin/perl

# Rate limiting without Redis: the shared memory GCRA limiter alone.
# Budgets are per API key and per route class; a refused request is a
# JSON 429 with Retry-After and the RateLimit-* headers (and X- twins);
# the budget comes back as time passes; counters are shared by workers.

use warnings;
use strict;

use Test::More;

use LSS::Test;

my $t = LSS::Test->new(workers => 2);

my ($k1, $k2) = $t->write_keys_file('keys', {}, {});

$t->run(<<'EOF');
%%TEST_GLOBALS%%
events { }
http {
    %%TEST_GLOBALS_HTTP%%
    llmsafespace_keys_file %%TESTDIR%%/keys;

    # used before it is defined: zones are looked up by name; inherited by
    # locations that set no llmsafespace_limit of their own
    llmsafespace_limit default zone=fast;

    llmsafespace_limit_zone zone=slow:1m rate=1r/m burst=2;
    llmsafespace_limit_zone zone=fast:1m rate=4r/s burst=1;
    llmsafespace_limit_zone zone=create:64k rate=1r/m;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        location /api/v1/ {
            llmsafespace_api;
            llmsafespace_limit default zone=slow;
            llmsafespace_limit create zone=create;
        }

        location = /metrics {
            llmsafespace_metrics;
        }
    }

    # the same API on another port, limited by zone "fast"
    server {
        listen 127.0.0.1:%%PORT_8081%%;

        location /api/v1/ {
            llmsafespace_api;
        }
    }
}
EOF

sub user {
    my ($k, $port) = @_;
    return $t->get('/api/v1/user', key => $k->{key},
        port => $port // port(8080));
}

# burst 2: three requests, then refused

my @r = map { user($k1) } 1 .. 3;

is_deeply([map { $_->{status} } @r], [200, 200, 200], 'burst + 1 allowed');
is_deeply([map { $_->{headers}{'ratelimit-remaining'} } @r], [2, 1, 0],
    'RateLimit-Remaining counts down');
is($r[0]{headers}{'ratelimit-limit'}, 3, 'RateLimit-Limit is burst + 1');
is($r[0]{headers}{'x-ratelimit-limit'}, 3, 'X-RateLimit-Limit twin');
ok($r[2]{headers}{'ratelimit-reset'} > 60
    && $r[2]{headers}{'ratelimit-reset'} <= 180,
    'RateLimit-Reset: seconds until the whole budget is back')
    or diag($r[2]{headers}{'ratelimit-reset'});
ok(!defined $r[0]{headers}{'retry-after'}, 'no Retry-After when allowed');

my $r = user($k1);

is($r->{status}, 429, 'fourth request refused');
like($r->{headers}{'content-type'}, qr!^application/json!, 'JSON body');
is($r->{json}{error}{code}, 'rate_limited', 'error code rate_limited');
ok($r->{headers}{'retry-after'} >= 1 && $r->{headers}{'retry-after'} <= 60,
    'Retry-After within the 1 r/m interval')
    or diag($r->{headers}{'retry-after'});
is($r->{headers}{'ratelimit-remaining'}, 0, 'nothing remaining');
is($r->{headers}{'x-ratelimit-remaining'}, 0, 'X-RateLimit-Remaining twin');
is($r->{headers}{'ratelimit-limit'}, 3, 'limit still announced');
is($r->{json}{error}{details}{limit}, 3, 'details: limit');
is($r->{json}{error}{details}{retryAfter}, $r->{headers}{'retry-after'},
    'details: retryAfter matches the header');
ok(exists $r->{json}{error}{details}{reset}, 'details: reset');

# whichever worker answers, the budget is the same one

my @again = map { user($k1)->{status} } 1 .. 6;
is_deeply(\@again, [(429) x 6], 'refused by every worker');

# another key has its own budget

is(user($k2)->{status}, 200, 'another key is not limited');

# a class with its own zone: "create" (POST /sandboxes) does not share the
# default budget and is limited by its own (1 r/m, no burst)

$r = $t->request('POST', '/api/v1/sandboxes', key => $k2->{key},
    json => { runtime => 'python' });
isnt($r->{status}, 429, 'first create passes the limiter');
$r = $t->request('POST', '/api/v1/sandboxes', key => $k2->{key},
    json => { runtime => 'python' });
is($r->{status}, 429, 'second create refused by the create zone');
is($r->{headers}{'ratelimit-limit'}, 1, 'create zone: limit 1');
is(user($k2)->{status}, 200, 'default class unaffected by create');

# no key, no budget consumed: authentication comes first

$r = $t->get('/api/v1/user');
is($r->{status}, 401, 'unauthenticated: 401, not 429');

# the budget comes back with time (4 r/s, burst 1; inherited from http)

my @fast = map { user($k2, port(8081))->{status} } 1 .. 4;
ok((grep { $_ == 429 } @fast), 'fast zone refuses a quick series')
    or diag("@fast");

$r = $t->wait_for(sub {
    my $x = user($k2, port(8081));
    return $x->{status} == 200 ? $x : undef;
}, 5);
ok($r, 'allowed again after the interval');

# metrics count refusals per class

my $m = $t->metrics();
ok(($m->{'llmsafespace_rate_limited_total{class="default"}'} // 0) >= 7,
    'rate_limited_total counts default refusals')
    or diag(explain($m));
ok(($m->{'llmsafespace_rate_limited_total{class="create"}'} // 0) >= 1,
    'rate_limited_total counts create refusals');

$t->finish();
