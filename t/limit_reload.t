#!/usr/bin/perl

# "nginx -s reload": the limiter's shared memory zone keeps every key's
# state across the reload; old workers, whose Redis connection is idle,
# exit promptly; and requests running through a reload all succeed.

use warnings;
use strict;

use Test::More;

use LSS::Test;

my $t = LSS::Test->new(workers => 2);

$t->redis_start();

my ($k1, $k2, $k3) = $t->write_keys_file('keys', {}, {}, {});

my $conf = <<'EOF';
%%TEST_GLOBALS%%
events { }
http {
    %%TEST_GLOBALS_HTTP%%
    llmsafespace_keys_file %%TESTDIR%%/keys;
    llmsafespace_redis %%REDIS%% timeout=2s backoff=50ms:300ms;
    llmsafespace_limit_zone zone=slow:1m rate=1r/m burst=2;
    llmsafespace_limit_zone zone=busy:1m rate=1000r/s burst=1000;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        location /api/v1/ {
            llmsafespace_api;
            llmsafespace_limit default zone=slow;
        }

        # GENERATION
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

(my $c = $conf) =~ s/GENERATION/generation 1/;
$t->run($c);

sub user { $t->get('/api/v1/user', key => $_[0]{key}) }

# reload and wait until only new workers are left: a bounded wait that
# fails if an old worker does not exit

sub reload_and_wait {
    my ($generation) = @_;
    my @old = $t->worker_pids();

    (my $c = $conf) =~ s/GENERATION/generation $generation/;
    $t->reload($c);

    return $t->wait_for(sub {
        my @now = $t->worker_pids();
        my %old = map { $_ => 1 } @old;
        return !grep({ kill 0, $_ } @old)
            && (grep { !$old{$_} } @now) >= 2;
    }, 15);
}

my @r = map { user($k1)->{status} } 1 .. 4;
is_deeply(\@r, [200, 200, 200, 429], 'k1: budget spent before the reload');

# Redis holds the shared state too: take it away so only the local zone
# can remember k1 after the reload

my $rc = $t->redis();
$rc->flushall();
$rc->quit();

ok(reload_and_wait(2), 'reload: old workers exited promptly');

my $r = user($k1);
is($r->{status}, 429, 'k1 still refused after the reload: zone kept');
is($r->{headers}{'ratelimit-remaining'}, 0, 'no budget after the reload');
is(user($k2)->{status}, 200, 'k2 allowed after the reload');

# requests during reloads: none fails (no keepalive: a reload closes idle
# keepalive connections, which nginx defines as normal)

my $reloads = 0;

my @res = $t->parallel(count => 1200, concurrency => 8, keepalive => 0,
    timeout => 60, port => port(8081),
    request => sub {
        my $i = shift;

        if ($i == 200 || $i == 500 || $i == 800) {
            $reloads++;
            (my $c = $conf) =~ s/GENERATION/generation 1$reloads/;
            $t->reload($c);
        }

        my $k = $i % 2 ? $k2 : $k3;
        return ('GET', '/api/v1/user',
            { Authorization => "Bearer $k->{key}" });
    });

is($reloads, 3, 'three reloads happened during the run');

my @bad = grep { $_->{status} != 200 } @res;
is(scalar @bad, 0, 'every request during the reloads succeeded')
    or diag(explain([@bad[0 .. ($#bad < 4 ? $#bad : 4)]]));

ok(reload_and_wait(3), 'old workers exited after the load');

$t->finish();
