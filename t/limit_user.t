#!/usr/bin/perl

# Rate limits per user as well as per key: every key of a user draws on
# the user's budget too, so minting keys does not multiply what a user may
# do.  By default the user's budget is one key's; with user_rate and
# user_burst a user may have more than one key's, each key still held to
# its own.  The same on this gateway alone (shared memory) and across
# gateways (Redis); another user keeps their own budget.

use warnings;
use strict;

use Test::More;

use LSS::Test;

my $t = LSS::Test->new(workers => 2);

$t->redis_start();
$t->pg_start();

my $conf = <<'EOF';
%%TEST_GLOBALS%%
events { }
http {
    %%TEST_GLOBALS_HTTP%%
    REDIS
    llmsafespace_postgres "%%PG%%";
    llmsafespace_key_cache zone=keys:1m;
    llmsafespace_limit_zone zone=api:1m rate=1r/m burst=2;
    llmsafespace_limit_zone zone=wide:1m rate=1r/m burst=2
                            user_rate=1r/m user_burst=4;
    server {
        listen 127.0.0.1:%%PORT_8080%%;
        location /api/v1/ {
            llmsafespace_api;
            llmsafespace_limit default zone=api;
        }
    }
    server {
        listen 127.0.0.1:%%PORT_8081%%;
        location /api/v1/ {
            llmsafespace_api;
            llmsafespace_limit default zone=wide;
        }
    }
}
EOF

my $alice_id = $t->create_user(name => 'alice');
my @alice = map { $t->create_key($alice_id) } 1 .. 4;
my $bob_id = $t->create_user(name => 'bob');
my $bob = $t->create_key($bob_id);
my $ready = $t->create_key($t->create_user(name => 'ready'));

# statuses of n requests per key, keys taken in turn; the zone "wide" is
# the second server's
sub statuses {
    my ($zone, $keys, $n) = @_;
    my @port = $zone eq 'wide' ? (port => LSS::Test::port(8081)) : ();
    my @s;
    for my $i (1 .. $n) {
        for my $k (@$keys) {
            push @s, $t->get('/api/v1/user', key => $k->{key}, @port)
                ->{status};
        }
    }
    return \@s;
}

sub count { my ($s, $c) = @_; scalar grep { $_ == $c } @$s }

for my $mode ('shared memory', 'Redis') {
    $t->run($conf =~ s/REDIS/$mode eq 'Redis'
        ? 'llmsafespace_redis %%REDIS%%;' : ''/er);

    # PostgreSQL reached by both workers (slow under valgrind), with a
    # user of its own: the budgets below stay whole
    ok($t->wait_for(sub { !grep { $t->get('/api/v1/user',
        key => $ready->{key})->{status} == 503 } 1 .. 2 }, 30),
        "$mode: the gateway answers");

    # warm the key cache (a lookup is not limited twice); no budget used
    # by it: the route is limited only after authentication, and these
    # count too, so each key makes its own first request here
    my $s = statuses('api', \@alice, 3);
    is(count($s, 200), 3, "$mode: 4 keys of one user, 12 requests: "
        . '3 allowed, one key\'s budget (burst 2)');
    is(count($s, 429), 9, "$mode: ... the rest 429");

    my $r = $t->get('/api/v1/user', key => $alice[3]{key});
    is($r->{status}, 429, "$mode: a key not yet used is refused too");
    is($r->{json}{error}{code}, 'rate_limited', "$mode: rate_limited");
    ok($r->{headers}{'retry-after'}, "$mode: with Retry-After");

    is(count(statuses('api', [ $bob ], 3), 200), 3,
        "$mode: another user has their own budget");

    # user_rate/user_burst: 5 for the user, 3 for each key
    $s = statuses('wide', [ @alice[0, 1] ], 4);
    is(count($s, 200), 5, "$mode: a wider user budget: 5 of 8 allowed");
    is(count([ @$s[grep { $_ % 2 == 0 } 0 .. 7] ], 200), 3,
        "$mode: ... one key still held to its own 3");

    if ($mode eq 'Redis') {
        # carol's user budget spent on another gateway: a key of hers that
        # this gateway has never limited is refused by the shared budget
        my $carol_id = $t->create_user(name => 'carol');
        my $carol = $t->create_key($carol_id);
        my ($sec, $us) = @{[ $t->redis()->time() ]};
        $t->redis()->set("lss:rl:api:user:$carol_id",
            ($sec + 240) * 1000000 + $us, 'PX', 300000);
        $r = $t->get('/api/v1/user', key => $carol->{key});
        is($r->{status}, 429, 'Redis: the user budget is shared by gateways');
        is($r->{headers}{'ratelimit-remaining'}, 0, 'Redis: none remaining');
        ok(defined $t->redis()->get("lss:rl:api:$bob->{id}"),
            'Redis: keys and users have their own budgets there');
    }

    $t->stop();
    $t->redis()->flushall() if $mode eq 'Redis';
}

$t->finish();
