#!/usr/bin/perl

# A cap on the API keys a user holds (llmsafespace_keys_per_user): creates
# in flight together cannot pass it; over it, 403 quota_exceeded says to
# revoke one first; a revoked key frees a place.  Without the directive a
# user may hold 20.

use warnings;
use strict;

use Test::More;
use JSON::XS;

use LSS::Test;

my $json = JSON::XS->new->utf8->canonical;
my $t = LSS::Test->new(workers => 2);

$t->pg_start();

my $conf = <<'EOF';
%%TEST_GLOBALS%%
events { }
http {
    %%TEST_GLOBALS_HTTP%%
    # creates of one user queue on its lock in PostgreSQL: generous
    # timeout for valgrind's pace
    llmsafespace_postgres "%%PG%%" connections=4 timeout=10s;
    llmsafespace_key_cache zone=keys:1m;
    CAP
    server {
        listen 127.0.0.1:%%PORT_8080%%;
        location /api/v1/ {
            llmsafespace_api;
        }
    }
}
EOF

$t->run($conf =~ s/CAP/llmsafespace_keys_per_user 5;/r);

my $dbh = $t->dbh();
my $alice_id = $t->create_user(name => 'alice');
my $alice = $t->create_key($alice_id);

ok($t->wait_for(sub {
    !grep { $t->get('/api/v1/user', key => $alice->{key})->{status} != 200 }
        1 .. 4 }, 30), 'the gateway answers');

sub active {
    my ($user) = @_;
    return $dbh->selectrow_array(q{SELECT count(*) FROM api_keys
        WHERE user_id = ? AND revoked_at IS NULL}, undef, $user);
}

# $n creates in flight together
sub mint {
    my ($key, $n) = @_;
    my @r = $t->parallel(count => $n, concurrency => $n, keepalive => 0,
        request => sub {
            ('POST', '/api/v1/user/apikeys',
             { Authorization => "Bearer $key->{key}",
               'Content-Type' => 'application/json' },
             $json->encode({ name => "k$_[0]" }));
        });
    my %by;
    $by{$_->{status}}++ for @r;
    return (\%by, \@r);
}

my ($by, $r) = mint($alice, 30);
is($by->{201}, 4, '30 concurrent creates with 1 key held: 4 made')
    or diag(explain($by));
is($by->{403}, 26, '... the others refused');
is(active($alice_id), 5, 'exactly 5 active keys');

my ($refused) = grep { $_->{status} == 403 } @$r;
my $err = $refused && eval { $json->decode($refused->{body}) };
is($err && $err->{error}{code}, 'quota_exceeded', 'code quota_exceeded');
is_deeply($err && $err->{error}{details}, { limit => 5, current => 5 },
    'details: limit and current');
like($err && $err->{error}{message}, qr/revoke/, 'says what to do');
openapi_ok('POST', '/api/v1/user/apikeys', 403, $refused && $refused->{body});

my ($made) = grep { $_->{status} == 201 } @$r;
my $new = $made && $json->decode($made->{body});
is($t->request('DELETE', "/api/v1/user/apikeys/$new->{id}",
    key => $alice->{key})->{status}, 200, 'one revoked');

($by) = mint($alice, 8);
is($by->{201}, 1, 'then one of 8 made') or diag(explain($by));
is(active($alice_id), 5, 'still 5 active');

# the default: 20

$t->stop();
$t->run($conf =~ s/CAP//r);

my $bob_id = $t->create_user(name => 'bob');
my $bob = $t->create_key($bob_id);
ok($t->wait_for(sub {
    !grep { $t->get('/api/v1/user', key => $bob->{key})->{status} != 200 }
        1 .. 4 }, 30), 'restarted without the directive');
($by) = mint($bob, 24);
is($by->{201}, 19, 'default cap: 20 keys in all') or diag(explain($by));

$t->finish();
