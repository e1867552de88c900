#!/usr/bin/perl

# docs/openapi.yaml against the real gateway: every response of the routes
# that need no running sandbox (users, keys, runtimes, profiles, warm
# pools, sandbox records and their errors, and the errors nginx raises
# itself) is checked with t/lib/openapi_check.py.  The checker itself is
# shown to refuse what the document does not allow, so that a pass means
# something.

use warnings;
use strict;

use Test::More;

use LSS::Test;

my $TOP = $LSS::Test::TOP;
my $CHECK = "$TOP/t/lib/openapi_check.py";

my $t = LSS::Test->new(workers => 1);

###############################################################################
# the checker on its own: what it must refuse

sub check {
    my (@args) = @_;
    my $body = pop @args;
    my $f = $t->write_file('body.json', $body);
    my $out = `/usr/bin/python3 $CHECK $LSS::Test::OPENAPI @args $f 2>&1`;
    return ($? >> 8, $out);
}

my $pool = '{"id": "wp-0123456789abcdef", "name": "py", "runtime": "p",'
    . ' "minSize": 1, "maxSize": 1, "securityLevel": "standard",'
    . ' "preloadPackages": [], "preloadScripts": [], "autoScaling": {},'
    . ' "source": "api", "status": {"availablePods": 0, "assignedPods": 0,'
    . ' "pendingPods": 0, "lastScaleTime": null, "conditions": []},'
    . ' "createdAt": "2026-01-01T00:00:00Z", "updatedAt":'
    . ' "2026-01-01T00:00:00Z"}';

my $lint = `/usr/bin/python3 $CHECK $LSS::Test::OPENAPI --lint 2>&1`;
is($? >> 8, 0, 'the document lints: refs resolve, schemas valid, path '
    . 'parameters declared, operationIds unique') or diag($lint);

my ($rc, $out) = check('GET', '/api/v1/warmpools/py', 200, $pool);
is($rc, 0, 'checker: a valid pool passes') or diag($out);

(my $bad = $pool) =~ s/"minSize": 1/"minSize": "1"/;
($rc, $out) = check('GET', '/api/v1/warmpools/py', 200, $bad);
is($rc, 1, 'checker: a string for an integer fails');
like($out, qr/\$\.minSize: '1' is not of type 'integer'/,
    '  naming where and why');

($bad = $pool) =~ s/"source": "api"/"source": "api", "owner": "x"/;
is((check('GET', '/api/v1/warmpools/py', 200, $bad))[0], 1,
    'checker: a field the document does not have fails');

($bad = $pool) =~ s/, "lastScaleTime": null//;
is((check('GET', '/api/v1/warmpools/py?x=1', 200, $bad))[0], 1,
    'checker: a required field missing fails (query string ignored)');

($bad = $pool) =~ s/"createdAt": "2026-01-01T00:00:00Z"/"createdAt": "today"/;
is((check('GET', '/api/v1/warmpools/py', 200, $bad))[0], 1,
    'checker: a timestamp that is not one fails');

is((check('GET', '/api/v1/warmpools/py', 200, '{"id": '))[0], 1,
    'checker: a body that is not JSON fails');
is((check('GET', '/api/v1/warmpools/py', 201, $pool))[0], 2,
    'checker: an undocumented status: 2');
is((check('PUT', '/api/v1/warmpools/py', 200, $pool))[0], 2,
    'checker: an undocumented method: 2');
is((check('GET', '/api/v1/nothing', 200, '{}'))[0], 2,
    'checker: an undocumented path: 2');
is((check('GET', '/api/v1/nothing', 404,
    '{"error": {"code": "not_found", "message": "m", "details": {}}}'))[0],
    0, 'checker: a 404 on any path is the document\'s default error');
is((check('GET', '/api/v1/nothing', 404, '<html>404</html>'))[0], 1,
    'checker: an HTML error page fails');

is((check('GET', '/api/v1/sandboxes/sb-0123456789/files/a/b.txt', 200,
    "\x00\x01binary"))[0], 0,
    'checker: a download (multi-segment path) is not JSON: not checked');
is((check('GET', '/api/v1/sandboxes/sb-0123456789/files?path=.', 200,
    '[{"name": "a", "path": "a", "size": 1, "mode": 420, "isDir": false,'
    . ' "modTime": "2026-01-01T00:00:00.123Z"}]'))[0], 0,
    'checker: a listing matches the directory path, not a file path');

is((check('--schema', 'StreamServerMessage', '{"type": "output",'
    . ' "executionId": "e", "stream": "stdout", "content": "x"}'))[0], 0,
    'checker --schema: a WebSocket message passes');
($rc, $out) = check('--schema', 'StreamServerMessage', '{"type": "output",'
    . ' "executionId": "e", "stream": "stdin", "content": "x"}');
is($rc, 1, 'checker --schema: a wrong stream fails');
like($out, qr/\$\.stream: 'stdin' is not one of/,
    '  in the branch of its type');

###############################################################################
# the gateway

$t->redis_start();
$t->pg_start();
$t->dbh()->do($t->read_file("$TOP/sql/controller.sql"));

$t->run(<<"EOF");
%%TEST_GLOBALS%%
events { }
http {
    %%TEST_GLOBALS_HTTP%%
    llmsafespace_postgres "%%PG%%" timeout=2s backoff=50ms:200ms;
    llmsafespace_redis %%REDIS%%;
    llmsafespace_runtimes $TOP/runtimes/index.json;
    llmsafespace_profiles $TOP/conf/profiles.json;
    llmsafespace_sandboxes contract=$TOP/controller/contract quota=2;

    llmsafespace_limit_zone zone=tight:1m rate=1r/m burst=3;
    client_max_body_size 64k;
    large_client_header_buffers 2 1k;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        # errors raised before a location is chosen use the server's conf
        llmsafespace_json_errors on;

        location /api/v1/ {
            llmsafespace_api;
            llmsafespace_json_body_size 16k;
        }
    }

    # the same API with a rate limit that is soon used up
    server {
        listen 127.0.0.1:%%PORT_8081%%;
        location /api/v1/ {
            llmsafespace_api;
            llmsafespace_limit default zone=tight;
        }
    }
}
EOF

my $admin = $t->create_key($t->create_user(name => 'root', role => 'admin'));
my $user = $t->create_key($t->create_user(name => 'alice'));

my %seen;

# one request, its response checked against the document

sub call {
    my ($method, $path, $key, %o) = @_;
    my $want = delete $o{status};
    my $r = $t->request($method, "/api/v1$path",
        (defined $key ? (key => $key) : ()), %o);

    my $name = length $path > 60 ? substr($path, 0, 60) . '...' : $path;

    is($r->{status}, $want, "$method $name: $want") if defined $want;
    openapi_ok($method, "/api/v1$path", $r->{status}, $r->{body},
        "  $method $name $r->{status} matches the document");
    $seen{$r->{status}}++;

    return $r;
}

$t->wait_for(sub {
    $t->get('/api/v1/user', key => $admin->{key})->{status} == 200 });

# users and keys

call(GET => '/user', $user->{key}, status => 200);
call(GET => '/user/apikeys', $user->{key}, status => 200);
my $k = call(POST => '/user/apikeys', $user->{key}, json => { name => 'ci' },
    status => 201)->{json};
call(POST => '/user/apikeys', $user->{key}, status => 201);
call(GET => '/user/apikeys', $user->{key}, status => 200);
call(DELETE => "/user/apikeys/$k->{id}", $user->{key}, status => 200);
call(DELETE => '/user/apikeys/0000000000000000', $user->{key},
    status => 404);
call(POST => '/user/apikeys', $user->{key}, json => { name => 7 },
    status => 400);
call(POST => '/user/apikeys', $user->{key}, json => { nam => 'x' },
    status => 422);

call(GET => '/users', $admin->{key}, status => 200);
call(GET => '/users?limit=0', $admin->{key}, status => 422);
my $bob = call(POST => '/users', $admin->{key},
    json => { name => 'bob', role => 'user' }, status => 201)->{json};
call(POST => '/users', $admin->{key}, json => { name => 'bob' },
    status => 409);
call(GET => "/users/$bob->{user}{id}", $admin->{key}, status => 200);
call(DELETE => "/users/$bob->{user}{id}", $admin->{key}, status => 200);
call(GET => "/users/$bob->{user}{id}", $admin->{key}, status => 404);
call(GET => '/users', $user->{key}, status => 403);

# the catalog

call(GET => '/runtimes', $user->{key}, status => 200);
call(GET => '/runtimes/python', $user->{key}, status => 200);
call(GET => '/runtimes/ruby', $user->{key}, status => 404);
call(GET => '/profiles', $user->{key}, status => 200);
call(GET => '/profiles/default', $user->{key}, status => 200);
call(GET => '/profiles/none', $user->{key}, status => 404);

# warm pools

call(GET => '/warmpools', $admin->{key}, status => 200);
my $wp = call(POST => '/warmpools', $admin->{key}, json => {
    name => 'oa', runtime => 'python', minSize => 0, maxSize => 2,
    preloadPackages => [ 'numpy' ],
    preloadScripts => [ { name => 's', content => 'x = 1' } ],
    autoScaling => { enabled => JSON::XS::true } }, status => 201)->{json};
call(POST => '/warmpools', $admin->{key},
    json => { name => 'oa', runtime => 'python' }, status => 409);
call(POST => '/warmpools', $admin->{key},
    json => { name => 'Oa', runtime => 'python' }, status => 422);
call(GET => '/warmpools', $admin->{key}, status => 200);
call(GET => "/warmpools/$wp->{id}", $admin->{key}, status => 200);
call(GET => '/warmpools/oa/status', $admin->{key}, status => 200);

$t->dbh()->do(q{UPDATE warm_pools SET status = '{"availablePods": 0,
    "assignedPods": 0, "pendingPods": 2, "desiredPods": 2,
    "conditions": [{"type": "Ready", "status": "False", "reason": "Filling",
    "message": "warm sandboxes are starting",
    "lastTransitionTime": "2026-01-01T00:00:00Z"}]}' WHERE name = 'oa'});
call(GET => '/warmpools/oa/status', $admin->{key}, status => 200);
call(GET => '/warmpools/oa', $admin->{key}, status => 200);

call(PATCH => '/warmpools/oa', $admin->{key}, json => { maxSize => 3 },
    status => 200);
call(PATCH => '/warmpools/oa', $admin->{key}, json => { runtime => 'x' },
    status => 422);
$t->dbh()->do(q{INSERT INTO warm_pools (name, runtime, source, auto_scaling)
    VALUES ('mf', 'python:3.11', 'manifest', '{"enabled": false,
    "targetUtilization": 80, "scaleDownDelay": 300}')});
call(PATCH => '/warmpools/mf', $admin->{key}, json => { maxSize => 3 },
    status => 409);
call(GET => '/warmpools', $admin->{key}, status => 200);
call(DELETE => '/warmpools/oa', $admin->{key}, status => 200);
call(DELETE => '/warmpools/oa', $admin->{key}, status => 404);
call(GET => '/warmpools', $user->{key}, status => 403);

# sandbox records (no controller runs here: a cold create stays Pending)

call(GET => '/sandboxes', $user->{key}, status => 200);
call(GET => '/sandboxes/sb-00000000000000000000', $user->{key},
    status => 404);
call(GET => '/sandboxes/sb-00000000000000000000/status', $user->{key},
    status => 404);
call(POST => '/sandboxes', $user->{key}, json => { runtime => 'ruby' },
    status => 422);
call(POST => '/sandboxes', $user->{key}, json => { runtime => 1 },
    status => 400);
# beyond what the controller gives: refused, not clamped behind the
# answer's back (the answer shows what was asked)
for my $res ({ cpu => 64 }, { cpu => '50m' }, { memory => '512Gi' },
             { memory => '1Mi' })
{
    my $e = call(POST => '/sandboxes', $user->{key},
                 json => { runtime => 'python', resources => $res },
                 status => 422)->{json};
    is($e->{error}{details}{field}, 'resources',
       'out of bounds names resources: ' . join(',', %$res));
}

my $sb = call(POST => '/sandboxes', $user->{key}, json => {
    runtime => 'python', useWarmPool => JSON::XS::false,
    labels => { task => 't-1' } })->{json};

SKIP: {
    skip 'no sandbox record was made', 1 unless $sb && $sb->{id};

    call(GET => '/sandboxes', $user->{key}, status => 200);
    call(GET => '/sandboxes?label=task=t-1&phase=Pending,Running',
        $user->{key}, status => 200);
    call(GET => "/sandboxes/$sb->{id}", $user->{key}, status => 200);
    call(GET => "/sandboxes/$sb->{id}/status", $user->{key}, status => 200);
    call(GET => "/sandboxes/$sb->{id}", $admin->{key}, status => 200);
    call(POST => "/sandboxes/$sb->{id}/execute", $user->{key},
        json => { type => 'code', content => 'print(1)' }, status => 409);
    call(DELETE => "/sandboxes/$sb->{id}", $user->{key});
}

# errors on any route, nginx's own included

call(GET => '/user', undef, status => 401);
call(GET => '/user', 'lsp_0000000000000000_' . ('0' x 32), status => 401);
call(GET => '/nowhere', $user->{key}, status => 404);
call(PUT => '/runtimes', $user->{key}, json => {}, status => 405);
call(POST => '/warmpools', $admin->{key}, body => '{"name": ',
    headers => { 'Content-Type' => 'application/json' }, status => 400);
call(POST => '/warmpools', $admin->{key}, json => { name => 'big',
    runtime => 'python', preloadScripts => [ { name => 'a',
    content => 'x' x 20000 } ] }, status => 413);
call(POST => '/users', $admin->{key}, body => 'x' x 70000, status => 413);
call(GET => '/runtimes/' . ('a' x 3000), $user->{key}, status => 414);
call(GET => '/user', $user->{key}, headers => { 'X-Big' => 'b' x 2000 },
    status => 400);

for (1 .. 10) {
    my $r = call(GET => '/user', $user->{key}, port => port(8081));
    last if $r->{status} == 429;
}
ok($seen{429}, 'a rate-limited answer was seen and checked');

$t->pg_stop();
call(GET => '/warmpools', $admin->{key}, status => 503);

$t->finish();
