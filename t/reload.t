#!/usr/bin/perl

# nginx -s reload under load: every request is answered (each on its own
# connection, so none is lost to the keepalive close nginx itself does on
# reload), the old workers exit promptly although they hold idle Redis
# connections, and the shared zones survive: metrics counters keep
# counting and a rate-limited key stays limited.

use warnings;
use strict;

use Test::More;

use LSS::Test;

my $t = LSS::Test->new(workers => 2);

$t->redis_start();

my ($alice, $bob) = $t->write_keys_file('keys',
    { role => 'user', user_id => 'usr-alice', user_name => 'alice' },
    { role => 'user', user_id => 'usr-bob', user_name => 'bob' });

my $conf = <<'EOF';
%%TEST_GLOBALS%%
events { }
http {
    %%TEST_GLOBALS_HTTP%%
    llmsafespace_redis %%REDIS%% timeout=2s backoff=50ms:300ms;
    llmsafespace_keys_file %%TESTDIR%%/keys;
    llmsafespace_key_cache zone=keys:1m;

    llmsafespace_limit_zone zone=wide:1m rate=100000r/s burst=100000;
    llmsafespace_limit_zone zone=tight:1m rate=1r/m burst=1;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        location /api/v1/ {
            llmsafespace_api;
            llmsafespace_limit default zone=wide;
        }

        location /tight/ {
            llmsafespace_auth on;
            llmsafespace_json_errors on;
            llmsafespace_limit default zone=tight;

            # a content handler: "return" would answer before access
            root %%TESTDIR%%/www;
        }

        location = /metrics {
            llmsafespace_metrics;
        }
    }
}
EOF

$t->write_file('www/tight/ok.txt', "ok\n");
chmod 0755, $t->testdir() . '/www', $t->testdir() . '/www/tight';
chmod 0644, $t->testdir() . '/www/tight/ok.txt';

$t->run($conf);

# bob spends his budget before any reload

my @bob = map { $t->get('/tight/ok.txt', key => $bob->{key})->{status} } 1 .. 3;
is_deeply(\@bob, [200, 200, 429], 'bob limited before the reload')
    or diag("@bob");

my $before = $t->metrics();
my $c200 = 'llmsafespace_requests_total{class="default",code="200"}';
my $start = $before->{llmsafespace_start_time_seconds};
ok($start, 'metrics zone has a start time');

my @old = $t->worker_pids();
is(scalar @old, 2, 'two workers');

# requests keep flying while nginx reloads several times

my $reloads = 0;
my $n = 1500;

my @res = $t->parallel(
    count => $n,
    concurrency => 16,
    keepalive => 0,
    timeout => 120,
    request => sub {
        ('GET', '/api/v1/user', { Authorization => "Bearer $alice->{key}" });
    },
    every => 0.3,
    during => sub {
        return if $reloads >= 4;
        $t->reload();
        $reloads++;
    },
);

ok($reloads >= 2, "reloaded $reloads times under load");

my @failed = grep { $_->{status} != 200 } @res;
is(scalar @failed, 0, "all $n requests answered 200 across reloads")
    or diag(join "\n", map { "$_->{status} " . ($_->{error} // '')
        . " $_->{body}" } @failed[0 .. ($#failed < 5 ? $#failed : 5)]);

# the old workers go, although they held Redis connections

my $gone = $t->wait_for(sub {
    my %now = map { $_ => 1 } $t->worker_pids();
    return !grep { $now{$_} } @old;
}, 30);
ok($gone, 'old workers exited');

ok($t->wait_for(sub { scalar($t->worker_pids()) == 2 }, 30),
    'two workers after the reloads');

# the shared zones survived

my $after = $t->metrics();
is($after->{llmsafespace_start_time_seconds}, $start,
    'metrics zone kept across reloads');
ok(($after->{$c200} // 0) >= ($before->{$c200} // 0) + $n,
    'request counters kept counting across reloads');

is($t->get('/tight/ok.txt', key => $bob->{key})->{status}, 429,
    'bob still limited after the reloads');

is($t->get('/api/v1/user', key => $alice->{key})->{status}, 200,
    'alice still served');

# a bad configuration is refused by the master; the old one keeps serving

$t->write_file('nginx.conf',
    $t->read_file('nginx.conf') =~ s/rate=1r\/m/rate=bogus/r);
$t->reload();

$t->wait_for(sub {
    $t->read_file('error.log') =~ /\[emerg\].*bogus/;
}, 10);

like($t->read_file('error.log'), qr/\[emerg\].*bogus/,
    'bad reload reported');
is($t->get('/api/v1/user', key => $alice->{key})->{status}, 200,
    'still serving after a refused reload');

$t->expect_alert(qr/\[emerg\].*bogus/);

# quit with idle Redis connections is prompt too (checked by finish)

$t->finish();
