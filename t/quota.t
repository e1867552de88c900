#!/usr/bin/perl

# The live-sandbox quota holds under concurrent creates of one user: many
# creates in flight at once, cold (a Pending record each) and warm (a
# claim from a pool each), never leave more live sandboxes than the quota;
# the ones refused answer 403 quota_exceeded and leave nothing live (a
# warm sandbox claimed by a refused create is marked for deletion, never
# handed to anybody).  Another user keeps their own quota.

use warnings;
use strict;

use Test::More;
use JSON::XS;

use LSS::Test;
use LSS::Stack;

my $json = JSON::XS->new->utf8->canonical;
my $quota = 5;

my $t = LSS::Test->new(workers => 2);

$t->redis_start();
$t->pg_start();
my $dbh = $t->dbh();
$dbh->do($t->read_file("$LSS::Test::TOP/sql/controller.sql"));

$t->run(<<"EOF");
%%TEST_GLOBALS%%
events { }
http {
    %%TEST_GLOBALS_HTTP%%
    llmsafespace_redis %%REDIS%%;
    # creates of one user queue on its lock in PostgreSQL: generous
    # timeout for valgrind's pace
    llmsafespace_postgres "%%PG%%" connections=4 timeout=10s;
    llmsafespace_key_cache zone=keys:1m;
    ${\ $t->sandbox_conf(quota => $quota) }
    server {
        listen 127.0.0.1:%%PORT_8080%%;
        location /api/v1/ {
            llmsafespace_api;
        }
    }
}
EOF

my $alice_id = $t->create_user(name => 'alice');
my $alice = $t->create_key($alice_id);
my $bob_id = $t->create_user(name => 'bob');
my $bob = $t->create_key($bob_id);

ok($t->wait_for(sub {
    !grep { $t->get('/api/v1/user', key => $alice->{key})->{status} != 200 }
        1 .. 4 }, 30), 'the gateway answers');

sub live {
    my ($owner) = @_;
    return $dbh->selectrow_array(q{SELECT count(*) FROM sandboxes
        WHERE owner = ? AND phase NOT IN ('Terminated', 'Failed')
        AND delete_requested_at IS NULL}, undef, $owner);
}

# $n creates in flight together
sub creates {
    my ($key, $n, $body) = @_;
    my @r = $t->parallel(count => $n, concurrency => $n, keepalive => 0,
        request => sub {
            ('POST', '/api/v1/sandboxes',
             { Authorization => "Bearer $key->{key}",
               'Content-Type' => 'application/json' },
             $json->encode($body));
        });
    my %by;
    $by{$_->{status}}++ for @r;
    return (\%by, \@r);
}

###############################################################################
# cold creates: a Pending record each, nobody starts them here

my ($by, $r) = creates($alice, 32, { runtime => "python",
    useWarmPool => JSON::XS::false });
is(($by->{202} // 0) + ($by->{201} // 0), $quota,
    "32 concurrent cold creates: exactly $quota made")
    or diag(explain($by));
is($by->{403}, 32 - $quota, '... the others refused');
is(live($alice_id), $quota, "$quota live sandboxes recorded, no more");

my ($refused) = grep { $_->{status} == 403 } @$r;
my $err = $refused && eval { $json->decode($refused->{body}) };
is($err && $err->{error}{code}, 'quota_exceeded', 'refused: quota_exceeded');
is($err && $err->{error}{details}{limit}, $quota, '... with the limit');

# deleting one frees one place, for exactly one of several
my ($one) = $dbh->selectrow_array(q{SELECT id FROM sandboxes
    WHERE owner = ? LIMIT 1}, undef, $alice_id);
is($t->request('DELETE', "/api/v1/sandboxes/$one", key => $alice->{key})
    ->{status}, 202, 'one deleted')
    or diag($t->request('GET', "/api/v1/sandboxes/$one",
        key => $alice->{key})->{body});
($by) = creates($alice, 8, { runtime => "python",
    useWarmPool => JSON::XS::false });
is(($by->{202} // 0) + ($by->{201} // 0), 1, 'then one of 8 made');
is(live($alice_id), $quota, 'still at the quota');

###############################################################################
# warm claims: a pool with more ready sandboxes than the quota

$dbh->do(q{INSERT INTO warm_pools (name, runtime, min_size, max_size,
    status) VALUES ('py', 'python:3.11', 20, 20,
    '{"availablePods": 40}')});

my $redis = $t->redis();
for my $i (1 .. 40) {
    my $id = sprintf('sb-warm%08d', $i);
    $dbh->do(q{INSERT INTO sandboxes (id, runtime, pool, phase)
        VALUES (?, 'python:3.11', 'py', 'Running')}, undef, $id);
    $redis->hset("lss:sb:$id", owner => '', runner => 'unix:/nonexistent',
        token => 'ab' x 32, expires => 0, runtime => 'python:3.11',
        pool => 'py', phase => 'Running');
    $redis->rpush('lss:pool:py:ready', $id);
}

($by) = creates($bob, 32, { runtime => 'python' });
is($by->{201}, $quota, "32 concurrent warm creates: exactly $quota claimed")
    or diag(explain($by));
is($by->{403}, 32 - $quota, '... the others refused');
is(live($bob_id), $quota, "$quota live sandboxes of bob, no more");

my ($marked) = $dbh->selectrow_array(q{SELECT count(*) FROM sandboxes
    WHERE pool = 'py' AND owner = ? AND delete_requested_at IS NOT NULL},
    undef, $bob_id);
my $popped = 40 - $redis->llen('lss:pool:py:ready');
is($marked, $popped - $quota,
    'every sandbox claimed by a refused create is marked for deletion');

my ($free) = $dbh->selectrow_array(q{SELECT count(*) FROM sandboxes
    WHERE pool = 'py' AND owner IS NULL}, undef);
is($free, 40 - $popped, 'the unclaimed ones stay free');

is(live($alice_id), $quota, 'alice unaffected');

$t->finish();
