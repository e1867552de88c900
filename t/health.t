#!/usr/bin/perl

# GET /healthz: 200 {"status":"ok"} when every configured dependency is
# up in the serving worker, 503 {"status":"degraded"} naming the one that
# is down otherwise; recovers by itself when the dependency returns.

use warnings;
use strict;

use Test::More;

use LSS::Test;

my $t = LSS::Test->new(workers => 2);

$t->redis_start(password => 'hunter2');
$t->pg_start();

my $conf = <<'EOF';
%%TEST_GLOBALS%%
events { }
http {
    %%TEST_GLOBALS_HTTP%%
    llmsafespace_redis %%REDIS%% password=%%REDIS_PASSWORD%%
                       connect_timeout=1s timeout=1s backoff=50ms:300ms;
    llmsafespace_postgres "%%PG%%" connections=1 connect_timeout=2s
                          timeout=2s backoff=50ms:300ms;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        location = /healthz {
            llmsafespace_health;
        }

        location = /metrics {
            llmsafespace_metrics;
        }
    }
}
EOF

$t->run($conf);

# the sum over workers of a per worker gauge

sub gauge_sum {
    my ($m, $name) = @_;
    my $sum = 0;
    $sum += $m->{$_} for grep { /^\Q$name\E\{worker=/ } keys %$m;
    return $sum;
}

sub health { $t->get('/healthz') }

# a probe reaches one worker: "all workers" means several answers in a row

sub settles {
    my ($want, $n) = @_;
    my $seen = 0;
    return $t->wait_for(sub {
        my $r = health();
        $seen = $r->{status} == $want ? $seen + 1 : 0;
        return $seen >= ($n // 6) ? $r : undef;
    }, 15);
}

my $r = settles(200);
ok($r, 'healthy once connected') or diag(health()->{body});
$r //= health();

is($r->{status}, 200, 'status 200');
like($r->{headers}{'content-type'}, qr!^application/json!, 'JSON');
is($r->{headers}{'cache-control'}, 'no-store', 'not cacheable');
is($r->{json}{status}, 'ok', 'status ok');
is_deeply($r->{json}{redis}, { configured => JSON::XS::true(),
    up => JSON::XS::true() }, 'redis configured and up');
is_deeply($r->{json}{postgres}, { configured => JSON::XS::true(),
    up => JSON::XS::true() }, 'postgres configured and up');

ok($t->wait_for(sub {
    gauge_sum($t->metrics(), 'llmsafespace_postgres_up') >= 1 }, 10),
    'metrics: postgres connections ready');

$r = $t->request('HEAD', '/healthz');
is($r->{status}, 200, 'HEAD answered');
is($r->{body}, '', 'HEAD has no body');

$r = $t->request('POST', '/healthz', body => 'x');
is($r->{status}, 405, 'POST refused');

# Redis goes away

$t->redis_stop();

$r = settles(503);
ok($r, 'degraded while redis is down');
$r //= health();
is($r->{json}{status}, 'degraded', 'status degraded');
ok(!$r->{json}{redis}{up}, 'redis reported down');
ok($r->{json}{postgres}{up}, 'postgres still up');

$t->redis_start();

$r = settles(200);
ok($r, 'healthy again after redis returns, no reload');
ok($r && $r->{json}{redis}{up}, 'redis reported up');

# PostgreSQL goes away

$t->pg_stop();

$r = settles(503);
ok($r, 'degraded while postgres is down');
$r //= health();
ok(!$r->{json}{postgres}{up}, 'postgres reported down');

ok($t->wait_for(sub {
    gauge_sum($t->metrics(), 'llmsafespace_postgres_up') == 0 }, 10),
    'metrics: no postgres connection ready while it is down');
ok($r->{json}{redis}{up}, 'redis still up');

$t->pg_start();

$r = settles(200);
ok($r, 'healthy again after postgres returns');

# without dependencies there is nothing to be down

$t->stop();
$t->run(<<'EOF');
%%TEST_GLOBALS%%
events { }
http {
    %%TEST_GLOBALS_HTTP%%
    server {
        listen 127.0.0.1:%%PORT_8080%%;
        location = /healthz { llmsafespace_health; }
    }
}
EOF

$r = health();
is($r->{status}, 200, 'no dependency configured: 200');
ok(!$r->{json}{redis}{configured}, 'redis not configured');
ok(!$r->{json}{postgres}{configured}, 'postgres not configured');

$t->finish();
