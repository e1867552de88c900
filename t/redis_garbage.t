#!/usr/bin/perl

# A "Redis" that answers the rate limiter's script with wrong, hostile or
# broken replies: wrong types, wrong shapes, out-of-range numbers, deep
# nesting, huge bulk lengths, protocol garbage, replies nobody asked for.
# The gateway must answer every request (allowed, limited or 503), never
# crash a worker, never log [alert]/[crit], and resynchronise by
# reconnecting.  A bounded, seeded random run: the seed is printed.

use warnings;
use strict;

use Test::More;
use IO::Select;
use IO::Socket::IP;

use LSS::Test;

my $seed = $ENV{LSS_TEST_SEED} // int(rand(1 << 30));
diag("seed $seed");

my $t = LSS::Test->new(workers => 2);
my @keys = $t->write_keys_file('keys', ({}) x 4);

my @replies = (
    ":1\r\n",                                   # not an array
    "+OK\r\n",
    "\$-1\r\n",                                 # nil
    "*-1\r\n",                                  # nil array
    "*0\r\n",
    "*3\r\n:1\r\n:1\r\n:1\r\n",                 # too short
    "*5\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n",     # too long
    "*4\r\n\$1\r\n1\r\n:1\r\n:1\r\n:0\r\n",     # a string inside
    "*4\r\n:2\r\n:1\r\n:1\r\n:0\r\n",           # allowed out of range
    "*4\r\n:1\r\n:-5\r\n:1\r\n:0\r\n",          # negative remaining
    "*4\r\n:1\r\n:999999999\r\n:1\r\n:0\r\n",   # remaining > burst
    "*4\r\n:0\r\n:0\r\n:9223372036854775807\r\n:1\r\n",
    "*4\r\n:1\r\n:0\r\n:1\r\n:0\r\n",           # well formed, allowed
    "*4\r\n:0\r\n:0\r\n:1000\r\n:1000\r\n",     # well formed, denied
    "-NOSCRIPT No matching script\r\n",
    "-ERR something broke\r\n",
    "*4\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n:1\r\n:1\r\n:1\r\n",
    "\$99999999999\r\n",                        # a bulk that never ends
    "?garbage\r\n",                             # not RESP at all
    ":12abc\r\n",
    "*4\r\n:1\r\n:0\r\n",                       # cut in the middle
    ":1\r\n:1\r\n:1\r\n",                       # more replies than asked
);

my $fake = port('fake');

$t->run_daemon(sub {
    $SIG{TERM} = sub { POSIX::_exit(0) };
    $SIG{PIPE} = 'IGNORE';
    srand($seed);

    my $l = IO::Socket::IP->new(LocalHost => '127.0.0.1',
        LocalPort => $fake, Listen => 64, ReuseAddr => 1) or die $!;
    my $sel = IO::Select->new($l);

    for (1 .. 100000) {
        for my $s ($sel->can_read(1)) {
            if ($s == $l) {
                $sel->add($l->accept());
                next;
            }

            my $buf;

            if (!sysread($s, $buf, 65536)) {
                $sel->remove($s);
                close $s;
                next;
            }

            # one answer per command read (AUTH/SELECT are not used here)

            my $n = () = $buf =~ /\*\d+\r\n\$/g;

            for (1 .. ($n || 1)) {
                my $x = rand() < 0.1
                    ? join('', map { chr(int(rand(256))) } 1 .. 1 + rand(64))
                    : $replies[int(rand(@replies))];
                syswrite($s, $x);
            }
        }
    }
});

$t->wait_port($fake) or die "fake server did not start\n";

$t->run(<<"EOF");
%%TEST_GLOBALS%%
events { }
http {
    %%TEST_GLOBALS_HTTP%%
    llmsafespace_keys_file %%TESTDIR%%/keys;
    llmsafespace_redis 127.0.0.1:$fake timeout=300ms backoff=10ms:50ms;
    llmsafespace_limit_redis_down refuse;
    llmsafespace_limit_zone zone=z:1m rate=100000r/s burst=100000;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        location /api/v1/ {
            llmsafespace_api;
            llmsafespace_limit default zone=z;
        }
    }
}
EOF

my @workers = $t->worker_pids();

my @res = $t->parallel(count => 1500, concurrency => 16, timeout => 120,
    request => sub {
        my $k = $keys[$_[0] % @keys];
        return ('GET', '/api/v1/user', { Authorization => "Bearer $k->{key}" });
    });

my %seen;
$seen{$_->{status}}++ for @res;
diag(join ' ', map { "$_:$seen{$_}" } sort keys %seen);

is(scalar(grep { $_->{status} !~ /^(200|429|503)$/ } @res), 0,
    'every request answered with 200, 429 or 503');
ok($seen{503}, 'broken replies give 503 under "refuse"');
ok($seen{200}, 'well-formed replies still allow requests');

is_deeply([$t->worker_pids()], \@workers, 'no worker crashed');
ok($t->can_connect("127.0.0.1:$fake"), 'the fake server lasted the run');
like($t->read_file('error.log'),
    qr/unexpected reply of the redis rate limit script|protocol error/,
    'bad replies are logged');

$t->stop_daemons();
$t->finish();
