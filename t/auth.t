#!/usr/bin/perl

# API key authentication against PostgreSQL: who gets in, who does not,
# users and keys managed through the API, revocation (through the API, in
# the database, and from another gateway through Redis), PostgreSQL going
# away, and keys never reaching a log.

use warnings;
use strict;

use Test::More;
use Time::HiRes qw/ sleep time /;

use LSS::Test;

my $t = LSS::Test->new(workers => 2);

$t->redis_start();
$t->pg_start();
$t->pg_schema() or BAIL_OUT('no sql/schema.sql');

$t->run(<<'EOF');
%%TEST_GLOBALS%%
events { }
http {
    %%TEST_GLOBALS_HTTP%%

    log_format lss '"$llmsafespace_request" $status '
                   'key=$llmsafespace_key_id user=$llmsafespace_user '
                   'uid=$llmsafespace_user_id';

    llmsafespace_postgres "%%PG%%" timeout=1s backoff=50ms:200ms;
    llmsafespace_redis %%REDIS%%;
    llmsafespace_key_cache zone=keys:1m ttl=1s stale=30s;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        access_log %%TESTDIR%%/lss.log lss;

        location /api/v1/ {
            llmsafespace_api;
        }
    }
}
EOF

my $dbh = $t->dbh();
my @secrets;

# a user and a key written straight into the database, as the bootstrap
# command does

sub db_user {
    my ($name, $role) = @_;
    my $id = $t->create_user(name => $name, role => $role);
    my $k = $t->create_key($id);

    $dbh = $t->dbh();
    push @secrets, $k->{secret};
    return { %$k, user_id => $id, name => $name };
}

sub api {
    my ($method, $path, $key, %o) = @_;
    return $t->request($method, "/api/v1$path",
        (defined $key ? (key => $key) : ()), %o);
}

sub is_error {
    my ($r, $status, $code, $name) = @_;
    subtest $name => sub {
        is($r->{status}, $status, 'status');
        is($r->{json} && $r->{json}{error}{code}, $code, 'code');
        ok($r->{json} && length $r->{json}{error}{message}, 'message');
    };
}

my $admin = db_user('root', 'admin');
my $alice = db_user('alice', 'user');

###############################################################################
# who gets in

my $r = api('GET', '/user');
is_error($r, 401, 'unauthorized', 'no key');
like($r->{headers}{'www-authenticate'} // '', qr/^Bearer/, 'challenge');

is_error(api('GET', '/user', 'lsp_short'), 401, 'unauthorized',
    'malformed key');
is_error(api('GET', '/user', undef,
        headers => { Authorization => "Basic $admin->{key}" }),
    401, 'unauthorized', 'not a bearer key');
is_error(api('GET', '/user', $t->make_key()->{key}), 401, 'unauthorized',
    'unknown key');
is_error(api('GET', '/user', "lsp_$admin->{id}_" . ('x' x 32)), 401,
    'unauthorized', 'known key id, wrong secret');

$r = api('GET', '/user', $admin->{key});
is($r->{status}, 200, 'admin key accepted');
is_deeply($r->{json}, { id => $admin->{user_id}, name => 'root',
    role => 'admin', keyId => $admin->{id} }, 'who am I');

$r = api('GET', '/user', $alice->{key});
is($r->{json}{role}, 'user', 'user key accepted');

is_error(api('GET', '/users', $alice->{key}), 403, 'forbidden',
    'user on an admin route');
is_error(api('POST', '/users', $alice->{key}, json => { name => 'x' }),
    403, 'forbidden', 'user creating users');

# a key is accepted in ?token= only on the stream route's WebSocket
# upgrade (t/query_key.t)

is_error(api('GET', "/user?token=$alice->{key}"), 401, 'unauthorized',
    'token in the query without an upgrade');
is_error(api('GET', "/user?token=$alice->{key}", undef,
        headers => { Upgrade => 'websocket', Connection => 'Upgrade' }),
    401, 'unauthorized', 'token in the query of an upgrade, not the stream');
is_error(api('GET', "/user?token=$alice->{key}", undef,
        headers => { Upgrade => 'h2c', Connection => 'Upgrade' }),
    401, 'unauthorized', 'token in the query of a non-WebSocket upgrade');

###############################################################################
# users and keys through the API

$r = api('POST', '/users', $admin->{key},
    json => { name => 'bob', role => 'user' });
is($r->{status}, 201, 'admin creates a user');
my $bob = $r->{json};
like($bob->{user}{id}, qr/^usr-[0-9a-z]{16}$/, 'user id');
like($bob->{apiKey}{key}, qr/^lsp_[0-9a-z]{16}_[0-9A-Za-z]{32}$/,
    'first key shown');
push @secrets, substr($bob->{apiKey}{key}, 21);

$r = api('GET', '/user', $bob->{apiKey}{key});
is($r->{json}{name}, 'bob', 'the new key works');

is_error(api('POST', '/users', $admin->{key}, json => { name => 'bob' }),
    409, 'conflict', 'duplicate user name');
is_error(api('POST', '/users', $admin->{key},
        json => { name => 'eve', role => 'root' }),
    422, 'validation_error', 'unknown role');
is(api('POST', '/users', $admin->{key},
        json => { name => 'eve', id => 'usr-aaaaaaaaaaaaaaaa' })
    ->{json}{error}{details}{field}, 'id', 'a field users may not set');
is_error(api('POST', '/users', $admin->{key}, json => { name => [] }),
    400, 'bad_request', 'wrong type');
is_error(api('POST', '/users', $admin->{key}, body => '{"name":'),
    400, 'bad_request', 'malformed JSON');

$r = api('GET', "/users/$bob->{user}{id}", $admin->{key});
is($r->{json}{name}, 'bob', 'admin gets a user');
is_error(api('GET', '/users/usr-0000000000000000', $admin->{key}),
    404, 'not_found', 'missing user');

$r = api('GET', '/users?limit=2', $admin->{key});
is(scalar @{$r->{json}{users}}, 2, 'user list is paginated');
is_error(api('GET', '/users?limit=0', $admin->{key}), 422,
    'validation_error', 'bad page size');

$r = api('POST', '/user/apikeys', $alice->{key}, json => { name => 'ci' });
is($r->{status}, 201, 'a second key');
my $second = $r->{json};
like($second->{key}, qr/^lsp_$second->{id}_/, 'its secret shown once');
push @secrets, substr($second->{key}, 21);

$r = api('GET', '/user/apikeys', $alice->{key});
is(scalar @{$r->{json}{apiKeys}}, 2, 'own keys listed');
ok(!grep({ exists $_->{key} } @{$r->{json}{apiKeys}}), 'no secrets listed');
ok(!grep({ $_->{id} eq $admin->{id} } @{$r->{json}{apiKeys}}),
    'only own keys');

is_error(api('DELETE', "/user/apikeys/$admin->{id}", $alice->{key}),
    404, 'not_found', "another user's key cannot be revoked");
is(api('GET', '/user', $admin->{key})->{status}, 200,
    '... and still works');

###############################################################################
# revocation

$r = api('DELETE', "/user/apikeys/$second->{id}", $alice->{key});
is($r->{status}, 200, 'own key revoked');
ok($r->{json}{revokedAt}, 'revocation time');

# every worker refuses it at once: the cache is shared

my @codes = map { api('GET', '/user', $second->{key})->{status} } 1 .. 8;
is_deeply(\@codes, [(401) x 8], 'revoked key refused by every worker');
is(api('GET', '/user', $second->{key})->{json}{error}{message},
    'API key revoked', 'says why');
is(api('GET', '/user', $alice->{key})->{status}, 200,
    'the other key still works');

# revoked in the database behind the gateway's back: the cache entry
# expires after its ttl (1s here)

is(api('GET', '/user', $alice->{key})->{status}, 200, 'cached');
$dbh->do('UPDATE api_keys SET revoked_at = now() WHERE id = ?', undef,
    $alice->{id});
ok($t->wait_for(sub {
    api('GET', '/user', $alice->{key})->{status} == 401 }, 5),
    'revocation in the database seen after the cache ttl');

# deleting a user revokes its keys

$r = api('DELETE', "/users/$bob->{user}{id}", $admin->{key});
is($r->{json}{revokedKeys}, 1, 'user deleted with its key');
is(api('GET', '/user', $bob->{apiKey}{key})->{status}, 401,
    'a deleted user\'s key is refused');
is_error(api('DELETE', "/users/$admin->{user_id}", $admin->{key}), 409,
    'conflict', 'an admin cannot delete themselves');

###############################################################################
# PostgreSQL down: cached keys work (bounded by "stale"), others get 503

my $carol = db_user('carol', 'user');
is(api('GET', '/user', $carol->{key})->{status}, 200, 'carol cached');
is(api('GET', '/user', $admin->{key})->{status}, 200, 'admin cached');

$t->pg_stop();
sleep 1.2;

my $start = time();
$r = api('GET', '/user', $carol->{key});
is($r->{status}, 200, 'cached key works while PostgreSQL is down');
is_error(api('GET', '/user', $t->make_key()->{key}), 503, 'unavailable',
    'unknown key while PostgreSQL is down');
is_error(api('GET', '/users', $admin->{key}), 503, 'unavailable',
    'database route while PostgreSQL is down');
cmp_ok(time() - $start, '<', 3, 'answered without waiting for timeouts');

$t->pg_start();

ok($t->wait_for(sub {
    api('GET', '/users', $admin->{key})->{status} == 200 }, 10),
    'PostgreSQL back without reload');
is_error(api('GET', '/user', $t->make_key()->{key}), 401, 'unauthorized',
    'unknown key refused again');

###############################################################################
# revocation on another gateway reaches this one through Redis

my $dave = db_user('dave', 'user');

$t->stop();
$t->run($t->read_file('nginx.conf') =~ s/ttl=1s/ttl=60s/r);

# PostgreSQL reached again after the restart (slow under valgrind)
ok($t->wait_for(sub { api('GET', '/user', $dave->{key})->{status} == 200 },
    30), 'dave cached (60s)');
$dbh->do('UPDATE api_keys SET revoked_at = now() WHERE id = ?', undef,
    $dave->{id});
$t->redis()->xadd('lss:keys:revoked', '*', 'key', $dave->{id});

ok($t->wait_for(sub {
    api('GET', '/user', $dave->{key})->{status} == 401 }, 5),
    'revocation announced in Redis seen within seconds');

###############################################################################
# keys never reach a log

$t->stop();

my $logs = join '', map { $t->read_file($_) // '' }
    qw/ error.log access.log lss.log stderr.log /;

ok(!grep({ index($logs, $_) >= 0 } @secrets), 'no secret in any log');
like($t->read_file('lss.log'), qr/token=REDACTED/, 'token redacted');
like($t->read_file('lss.log'),
    qr/ 200 key=$admin->{id} user=root uid=$admin->{user_id}/,
    'key and user variables');

$t->finish();
