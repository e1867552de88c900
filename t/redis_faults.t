#!/usr/bin/perl

# The Redis client when Redis misbehaves, none of which may hang a request
# or the gateway, or log [alert]/[crit]:
#   - nothing listens at the configured address (at startup already);
#   - a server accepts connections but never answers (commands time out,
#     the connection is declared dead, the queue bound holds);
#   - connects never complete (connect_timeout);
#   - the password is wrong.

use warnings;
use strict;

use Test::More;
use IO::Select;
use IO::Socket::IP;

use LSS::Test;

my $conf = <<'EOF';
%%TEST_GLOBALS%%
events { }
http {
    %%TEST_GLOBALS_HTTP%%
    llmsafespace_keys_file %%TESTDIR%%/keys;
    llmsafespace_redis REDIS_ADDRESS backoff=50ms:200ms;
    POLICY
    llmsafespace_limit_zone zone=z:1m rate=1r/m burst=2;

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

sub start {
    my ($t, $port, $redis, $policy, $template) = @_;
    (my $c = $template // $conf) =~ s/REDIS_ADDRESS/$redis/;
    $c =~ s/LISTEN_PORT/$port/;
    $c =~ s/POLICY/$policy/;
    $t->run($c);
}

# a request that is not answered within 3 s comes back with status 0

sub get {
    my ($t, $port, $path, $k) = @_;
    return $t->get($path, port => $port, timeout => 3,
        $k ? (key => $k->{key}) : ());
}

sub counter {
    my ($t, $port, $name) = @_;
    my $m = $t->metrics(port => $port);
    my $sum = 0;
    $sum += $m->{$_} for grep { /^llmsafespace_redis_${name}\{/ } keys %$m;
    return $sum;
}

###############################################################################
# nothing listens: nginx starts, requests are answered by the policy

my $ta = LSS::Test->new(workers => 2);
my @keys = $ta->write_keys_file('keys', ({}) x 4);

my $nothing = port('nothing');

start($ta, port(8080), "127.0.0.1:$nothing", '');

my @r = map { get($ta, port(8080), '/api/v1/user', $keys[0]) } 1 .. 4;
is_deeply([map { $_->{status} } @r], [200, 200, 200, 429],
    'no Redis at startup: local policy allows and limits locally');
is(get($ta, port(8080), '/healthz')->{status}, 503,
    'no Redis at startup: /healthz says so');
like($ta->read_file('error.log'),
    qr/\[error\].*redis 127\.0\.0\.1:$nothing: connect\(\) failed/,
    'connection failures logged as [error]');

###############################################################################
# a server that accepts and never answers

my $tb = LSS::Test->new(workers => 1);
$tb->write_file('keys', $ta->read_file('keys'));

my $silent = port('silent');

$tb->run_daemon(sub {
    $SIG{TERM} = sub { POSIX::_exit(0) };
    my $l = IO::Socket::IP->new(LocalHost => '127.0.0.1',
        LocalPort => $silent, Listen => 64, ReuseAddr => 1) or die $!;
    my $sel = IO::Select->new($l);

    for (1 .. 100000) {
        for my $s ($sel->can_read(1)) {
            if ($s == $l) {
                $sel->add($l->accept());
            } elsif (!sysread($s, my $buf, 65536)) {
                $sel->remove($s);
                close $s;
            }
        }
    }
});

$tb->wait_port($silent) or die "silent server did not start\n";

# a budget large enough that the local ceiling never answers first
(my $silent_conf = $conf) =~ s/backoff=/timeout=300ms queue=4 backoff=/;
$silent_conf =~ s/burst=2/burst=100/;
start($tb, port(8081), "127.0.0.1:$silent",
    'llmsafespace_limit_redis_down refuse;', $silent_conf);

@r = map { get($tb, port(8081), '/api/v1/user', $keys[1]) } 1 .. 3;
is_deeply([map { $_->{status} } @r], [503, 503, 503],
    'silent server: requests answered 503 after the command timeout');
is($r[0]{json}{error}{code}, 'unavailable', 'silent server: JSON 503');

# more requests at once than the queue holds: all answered, none hangs

my @res = $tb->parallel(count => 24, concurrency => 24, timeout => 20,
    port => port(8081),
    request => sub {
        ('GET', '/api/v1/user', { Authorization => "Bearer $keys[2]{key}" })
    });
is_deeply([map { $_->{status} } @res], [(503) x 24],
    'queue bound: 24 concurrent requests all answered 503');

ok($tb->wait_for(sub { counter($tb, port(8081), 'timeouts_total') > 0 }, 10),
    'metrics: command timeouts counted');
ok($tb->wait_for(sub { counter($tb, port(8081), 'errors_total') > 0 }, 10),
    'metrics: refused commands counted');
like($tb->read_file('error.log'), qr/\[error\].*no reply within the timeout/,
    'a connection without replies is declared dead');

###############################################################################
# connects that never complete: a listener whose backlog is full drops
# SYNs, so only connect_timeout ends them

my $tq = LSS::Test->new(workers => 1);
$tq->write_file('keys', $ta->read_file('keys'));

my $full = port('full');
my $listener = IO::Socket::IP->new(LocalHost => '127.0.0.1',
    LocalPort => $full, Listen => 1, ReuseAddr => 1) or die $!;
my @fill = map {
    IO::Socket::IP->new(PeerAddr => "127.0.0.1:$full", Timeout => 1)
} 1 .. 2;

(my $full_conf = $conf) =~ s/backoff=/connect_timeout=200ms backoff=/;
start($tq, port(8083), "127.0.0.1:$full",
    'llmsafespace_limit_redis_down refuse;', $full_conf);

@r = map { get($tq, port(8083), '/api/v1/user', $keys[3]) } 1 .. 3;
is_deeply([map { $_->{status} } @r], [503, 503, 503],
    'connect never completes: requests answered 503');
ok($tq->wait_for(sub {
    $tq->read_file('error.log') =~ /\[error\].*connect timed out/
}, 10), 'connect timeout logged');
is(get($tq, port(8083), '/healthz')->{status}, 503,
    'connect never completes: /healthz says redis is down');

$tq->stop();
is(join("\n", $tq->error_log_alerts()), '', 'full backlog: no alerts');
close $_ for grep { defined } @fill;
close $listener;

###############################################################################
# wrong password

my $tc = LSS::Test->new(workers => 1);
$tc->write_file('keys', $ta->read_file('keys'));
$tc->redis_start(password => 'right');

start($tc, port(8082), $tc->redis_address() . ' password=wrong',
    'llmsafespace_limit_redis_down refuse;');

ok($tc->wait_for(sub {
    $tc->read_file('error.log') =~ /\[error\].*connection setup failed/
}, 10), 'wrong password: AUTH failure logged');
is(get($tc, port(8082), '/healthz')->{status}, 503,
    'wrong password: /healthz says redis is down');
is(get($tc, port(8082), '/api/v1/user', $keys[3])->{status}, 503,
    'wrong password: refused with 503');

$tc->stop();
is(join("\n", $tc->error_log_alerts()), '', 'wrong password: no alerts');
$tb->stop();
is(join("\n", $tb->error_log_alerts()), '', 'silent server: no alerts');
$tb->stop_daemons();

$ta->finish();
