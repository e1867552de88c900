#!/usr/bin/perl

# The gateway's Redis client on a unix socket: it works, and when Redis
# stops (removing its socket) the gateway refuses at once, logs nothing
# worse than [error] while retrying, and recovers by itself.

use warnings;
use strict;

use Test::More;

use LSS::Test;

my $tu = LSS::Test->new(workers => 1);

$tu->redis_start(unix => 1);
my @keys = $tu->write_keys_file('keys', ({}) x 3);
my $k = $keys[0];

$tu->run(<<'EOF');
%%TEST_GLOBALS%%
events { }
http {
    %%TEST_GLOBALS_HTTP%%
    llmsafespace_keys_file %%TESTDIR%%/keys;
    llmsafespace_redis %%REDIS%% backoff=50ms:200ms;
    llmsafespace_limit_redis_down refuse;
    llmsafespace_limit_zone zone=u:1m rate=1r/m burst=1;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        location /api/v1/ {
            llmsafespace_api;
            llmsafespace_limit default zone=u;
        }

        location = /healthz {
            llmsafespace_health;
        }
    }
}
EOF

like($tu->redis_address(), qr/^unix:/, 'configured on a unix socket');

sub uget {
    my ($path, $k) = @_;
    return $tu->get($path, port => port(8080), timeout => 3,
        $k ? (key => $k->{key}) : ());
}

is(uget('/api/v1/user', $k)->{status}, 200, 'unix: allowed');
is(uget('/api/v1/user', $k)->{status}, 200, 'unix: second allowed');
is(uget('/api/v1/user', $k)->{status}, 429, 'unix: third refused');

my $ru = $tu->redis();
ok($ru->exists("lss:rl:u:$k->{id}"), 'unix: state in Redis');
$ru->quit();

# Redis removes its socket when it stops: reconnecting must not log
# anything worse than [error]

$tu->redis_stop();

ok(!-e $tu->testdir() . '/redis.sock', 'the socket file is gone');

ok($tu->wait_for(sub { uget('/healthz')->{status} == 503 }, 10),
    'unix: down once Redis stops');
is(uget('/api/v1/user', $keys[1])->{status}, 503,
    'unix: refused at once while down');

ok($tu->wait_for(sub {
    $tu->read_file('error.log') =~ /\[error\].*redis unix:.*cannot connect/
}, 10), 'reconnect attempts logged as [error]');

$tu->redis_start();

ok($tu->wait_for(sub { uget('/api/v1/user', $keys[2])->{status} == 200 },
    10), 'unix: serving again after Redis restarts');

$tu->finish();
