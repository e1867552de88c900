#!/usr/bin/perl

# Warm pools through the API (admin only): create, list, get, patch,
# delete, status over the warm_pools table the controller reads.  A pool
# the API accepts is a row in the shape the controller loads (source
# 'api', the runtime's descriptor name, complete autoScaling, resources
# as numbers); a pool it refuses is answered with the field at fault;
# manifest pools are read-only here.

use warnings;
use strict;

use Test::More;

use LSS::Test;

my $TOP = $LSS::Test::TOP;

my $t = LSS::Test->new(workers => 2);

$t->pg_start();

# the controller applies its schema at start; here the test does
$t->dbh()->do($t->read_file("$TOP/sql/controller.sql"));

$t->run(<<"EOF");
%%TEST_GLOBALS%%
events { }
http {
    %%TEST_GLOBALS_HTTP%%
    llmsafespace_postgres "%%PG%%" timeout=2s backoff=50ms:200ms;
    llmsafespace_key_cache zone=keys:1m ttl=60s stale=10m;
    llmsafespace_runtimes $TOP/runtimes/index.json;

    server {
        listen 127.0.0.1:%%PORT_8080%%;
        location /api/v1/ { llmsafespace_api; }
    }
}
EOF

my $dbh = $t->dbh();

my $admin = $t->create_key($t->create_user(name => 'root', role => 'admin'));
my $user = $t->create_key($t->create_user(name => 'alice'));

sub api {
    my ($method, $path, %o) = @_;
    my $key = exists $o{key} ? delete $o{key} : $admin->{key};
    return $t->request($method, "/api/v1$path",
        (defined $key ? (key => $key) : ()), %o);
}

sub is_error {
    my ($r, $status, $code, $field, $name) = @_;
    subtest $name => sub {
        is($r->{status}, $status, 'status');
        is($r->{json} && $r->{json}{error}{code}, $code, 'code');
        ok($r->{json} && length $r->{json}{error}{message}, 'message');
        is($r->{json} && $r->{json}{error}{details}{field}, $field,
            'details.field') if defined $field;
    } or diag(explain($r->{json} // $r->{body}));
}

sub row {
    my ($name) = @_;
    return $dbh->selectrow_hashref(q{SELECT id, name, runtime, min_size,
        max_size, security_level, preload_packages::text AS packages,
        preload_scripts::text AS scripts, auto_scaling::text AS autoscaling,
        resources::text AS resources, ttl_s, source FROM warm_pools
        WHERE name = ?}, undef, $name);
}

my $js = JSON::XS->new->canonical;
sub jsonb { $js->encode($js->decode($_[0])) }

my $TS = qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/;

###############################################################################
# admins only

my $wait = $t->wait_for(sub {
    my $r = api('GET', '/warmpools'); $r->{status} != 503 && $r });
is($wait->{status}, 200, 'GET /warmpools');
is_deeply($wait->{json}, { warmPools => [] }, '  no pools yet');

for my $rt ([ GET => '/warmpools' ], [ POST => '/warmpools' ],
    [ GET => '/warmpools/x' ], [ PATCH => '/warmpools/x' ],
    [ DELETE => '/warmpools/x' ], [ GET => '/warmpools/x/status' ])
{
    is_error(api(@$rt, key => $user->{key}, json => {}), 403, 'forbidden',
        undef, "a user's key: @$rt is forbidden");
}

is_error(api('GET', '/warmpools', key => undef), 401, 'unauthorized',
    undef, 'no key: 401');

###############################################################################
# create

my $r = api('POST', '/warmpools',
    json => { name => 'py', runtime => 'python' });
is($r->{status}, 201, 'POST /warmpools with a name and a runtime: 201');

my $py = $r->{json} // {};
like($py->{id} // '', qr/^wp-[0-9a-f]{16}$/, '  an id wp-...');
is($py->{runtime}, 'python:3.11',
    '  the runtime is recorded by its descriptor name');
is_deeply([ @$py{qw/ name minSize maxSize securityLevel source /} ],
    [ 'py', 1, 1, 'standard', 'api' ], '  a standard pool of one from the API');
is_deeply([ $py->{preloadPackages}, $py->{preloadScripts} ], [ [], [] ],
    '  no preloads');
is_deeply($py->{autoScaling}, { enabled => JSON::XS::false,
    targetUtilization => 80, scaleDownDelay => 300 },
    '  autoScaling with the controller\'s defaults, spelled out');
is_deeply($py->{resources}, { cpu => 1, memory => 536870912 },
    '  resources: the controller\'s defaults, in cores and bytes');
is($py->{ttl}, undef, '  no ttl');
is_deeply($py->{status}, { availablePods => 0, assignedPods => 0,
    pendingPods => 0, lastScaleTime => undef, conditions => [] },
    '  status all zero before the controller reports');
like($py->{createdAt} // '', $TS, '  createdAt');
like($py->{updatedAt} // '', $TS, '  updatedAt');

my $row = row('py');
is_deeply([ @$row{qw/ id runtime min_size max_size security_level source /} ],
    [ $py->{id}, 'python:3.11', 1, 1, 'standard', 'api' ],
    'the row is what the controller loads: source api, descriptor name');
is(jsonb($row->{autoscaling}), jsonb('{"enabled": false, '
    . '"targetUtilization": 80, "scaleDownDelay": 300}'),
    '  auto_scaling complete');
is_deeply([ @$row{qw/ packages scripts /} ], [ '[]', '[]' ],
    '  empty preload lists');
is(jsonb($row->{resources}), jsonb('{"cpu": 1, "memory": 536870912}'),
    '  resources complete for the controller');
is($row->{ttl_s}, undef, '  ttl_s NULL');

my $full = {
    name => 'node-hi', runtime => 'nodejs:18', minSize => 2, maxSize => 6,
    securityLevel => 'high', preloadPackages => [ 'lodash', 'left-pad' ],
    preloadScripts => [ { name => 'init.js', content => "globalThis.x = 1;\n" },
                        { name => 'two', content => "// \x{e9}t\x{e9}\n" } ],
    autoScaling => { enabled => JSON::XS::true, targetUtilization => 50,
                     scaleDownDelay => 60 },
};

$r = api('POST', '/warmpools', json => $full);
is($r->{status}, 201, 'a pool with every field: 201');
is_deeply({ map { $_ => $r->{json}{$_} } keys %$full }, $full,
    '  echoed as given');

$row = row('node-hi');
is_deeply([ @$row{qw/ runtime min_size max_size security_level source /} ],
    [ 'nodejs:18', 2, 6, 'high', 'api' ], '  the row has the sizes and level');
is(jsonb($row->{packages}), jsonb('["lodash", "left-pad"]'),
    '  preload_packages as a list of names');
is(jsonb($row->{scripts}), $js->encode($full->{preloadScripts}),
    '  preload_scripts as [{name, content}], text intact');
is(jsonb($row->{autoscaling}), $js->encode($full->{autoScaling}),
    '  auto_scaling as given');

# the controller's own query (lsc_pools_load) reads the spec it validates

my ($spec) = $dbh->selectrow_array(q{SELECT json_build_object('runtime',
    runtime, 'minSize', min_size, 'maxSize', max_size, 'securityLevel',
    security_level, 'preloadPackages', preload_packages, 'preloadScripts',
    preload_scripts, 'autoScaling', auto_scaling, 'resources', resources,
    'ttl', ttl_s)::text FROM warm_pools WHERE name = 'node-hi'});
is_deeply($js->decode($spec), { (map { $_ => $full->{$_} }
    grep { $_ ne 'name' } keys %$full),
    resources => { cpu => 1, memory => 536870912 }, ttl => undef },
    '  the controller reads back the spec the API was given');

$r = api('POST', '/warmpools', json => { name => 'base', runtime => 'base',
    maxSize => 0 });
is($r->{status}, 201, 'maxSize 0 alone: an empty pool');
is_deeply([ @{$r->{json}}{qw/ runtime minSize maxSize /} ],
    [ 'base:bookworm', 0, 0 ], '  minSize follows, rootfs name resolved');

$r = api('POST', '/warmpools', json => { name => 'py', runtime => 'nodejs' });
is_error($r, 409, 'conflict', undef, 'a second pool named "py": 409');
is(row('py')->{runtime}, 'python:3.11', '  the first is unchanged');

###############################################################################
# validation

my $long = 'a' x 48;
my @invalid = (
    [ 422, 'name', { runtime => 'python' }, 'no name' ],
    [ 400, 'name', { name => 5, runtime => 'python' }, 'a number as name' ],
    [ 422, 'name', { name => 'Py', runtime => 'python' }, 'uppercase name' ],
    [ 422, 'name', { name => 'p_y', runtime => 'python' }, 'underscore' ],
    [ 422, 'name', { name => '-py', runtime => 'python' }, 'leading hyphen' ],
    [ 422, 'name', { name => 'py-', runtime => 'python' }, 'trailing hyphen'],
    [ 422, 'name', { name => $long, runtime => 'python' }, '48 characters' ],
    [ 422, 'runtime', { name => 'x' }, 'no runtime' ],
    [ 422, 'runtime', { name => 'x', runtime => 'ruby' }, 'unknown runtime' ],
    [ 422, 'runtime', { name => 'x', runtime => 'python:3.12' },
      'unknown runtime version' ],
    [ 400, 'runtime', { name => 'x', runtime => [ 'python' ] },
      'runtime not a string' ],
    [ 422, 'owner', { name => 'x', runtime => 'python', owner => 'u' },
      'an unknown field' ],
    [ 422, 'source', { name => 'x', runtime => 'python', source => 'manifest' },
      'source cannot be set' ],
    [ 422, 'status', { name => 'x', runtime => 'python', status => {} },
      'status cannot be set' ],
    [ 400, 'minSize', { name => 'x', runtime => 'python', minSize => '1' },
      'minSize a string' ],
    [ 400, 'minSize', { name => 'x', runtime => 'python', minSize => 1.5 },
      'minSize a fraction' ],
    [ 422, 'minSize', { name => 'x', runtime => 'python', minSize => -1 },
      'minSize negative' ],
    [ 422, 'maxSize', { name => 'x', runtime => 'python', maxSize => 101 },
      'maxSize over 100' ],
    [ 422, 'maxSize', { name => 'x', runtime => 'python',
      maxSize => 99999999999999999 }, 'maxSize huge' ],
    [ 422, 'minSize', { name => 'x', runtime => 'python', minSize => 5,
      maxSize => 4 }, 'minSize over maxSize' ],
    [ 422, 'securityLevel', { name => 'x', runtime => 'python',
      securityLevel => 'custom' }, 'securityLevel custom' ],
    [ 400, 'securityLevel', { name => 'x', runtime => 'python',
      securityLevel => 1 }, 'securityLevel a number' ],
    [ 400, 'preloadPackages', { name => 'x', runtime => 'python',
      preloadPackages => 'numpy' }, 'preloadPackages a string' ],
    [ 400, 'preloadPackages', { name => 'x', runtime => 'python',
      preloadPackages => [ 1 ] }, 'preloadPackages of numbers' ],
    [ 422, 'preloadPackages', { name => 'x', runtime => 'python',
      preloadPackages => [ 'numpy; rm -rf /' ] }, 'a package with a space' ],
    [ 422, 'preloadPackages', { name => 'x', runtime => 'python',
      preloadPackages => [ 'numpy==1.0' ] }, 'a version specifier' ],
    [ 422, 'preloadPackages', { name => 'x', runtime => 'python',
      preloadPackages => [ '' ] }, 'an empty package name' ],
    [ 422, 'preloadPackages', { name => 'x', runtime => 'python',
      preloadPackages => [ ('p' x 100) x 4 ] },
      'packages over 399 characters joined' ],
    [ 400, 'preloadScripts', { name => 'x', runtime => 'python',
      preloadScripts => {} }, 'preloadScripts an object' ],
    [ 400, 'preloadScripts', { name => 'x', runtime => 'python',
      preloadScripts => [ 'print(1)' ] }, 'preloadScripts of strings' ],
    [ 400, 'preloadScripts', { name => 'x', runtime => 'python',
      preloadScripts => [ { name => 'a' } ] }, 'a script without content' ],
    [ 422, 'preloadScripts', { name => 'x', runtime => 'python',
      preloadScripts => [ { name => 'a', content => '', run => 1 } ] },
      'a script with an unknown field' ],
    [ 422, 'preloadScripts', { name => 'x', runtime => 'python',
      preloadScripts => [ { name => '../a', content => '' } ] },
      'a script name with a slash' ],
    [ 422, 'preloadScripts', { name => 'x', runtime => 'python',
      preloadScripts => [ { name => 'a', content => '' },
                          { name => 'a', content => '' } ] },
      'two scripts of one name' ],
    # jansson refuses \u0000 in any string: the whole body is malformed
    [ 400, undef, { name => 'x', runtime => 'python',
      preloadScripts => [ { name => 'a', content => "x\0y" } ] },
      'a script with NUL' ],
    [ 422, 'preloadScripts', { name => 'x', runtime => 'python',
      preloadScripts => [ { name => 'a', content => 'x' x 65537 } ] },
      'a script over 64 KiB' ],
    [ 422, 'preloadScripts', { name => 'x', runtime => 'python',
      preloadScripts => [ map { { name => "s$_", content => '' } } 1 .. 17 ] },
      '17 scripts' ],
    [ 400, 'autoScaling', { name => 'x', runtime => 'python',
      autoScaling => 1 }, 'autoScaling a number' ],
    [ 400, 'autoScaling.enabled', { name => 'x', runtime => 'python',
      autoScaling => { enabled => 'yes' } }, 'enabled a string' ],
    [ 422, 'autoScaling.targetUtilization', { name => 'x',
      runtime => 'python', autoScaling => { targetUtilization => 0 } },
      'targetUtilization 0' ],
    [ 422, 'autoScaling.targetUtilization', { name => 'x',
      runtime => 'python', autoScaling => { targetUtilization => 101 } },
      'targetUtilization 101' ],
    [ 400, 'autoScaling.scaleDownDelay', { name => 'x', runtime => 'python',
      autoScaling => { scaleDownDelay => '5m' } }, 'scaleDownDelay "5m"' ],
    [ 422, 'autoScaling.scaleDownDelay', { name => 'x', runtime => 'python',
      autoScaling => { scaleDownDelay => 86401 } }, 'scaleDownDelay > 1 day' ],
    [ 422, 'autoScaling', { name => 'x', runtime => 'python',
      autoScaling => { minReplicas => 1 } }, 'an unknown autoScaling field' ],
    # what the controller would clamp for a create, a pool may not hold
    [ 422, 'resources', { name => 'x', runtime => 'python',
      resources => { cpu => 3 } }, 'cpu over 2 cores' ],
    [ 422, 'resources', { name => 'x', runtime => 'python',
      resources => { cpu => '50m' } }, 'cpu under 100m' ],
    [ 422, 'resources', { name => 'x', runtime => 'python',
      resources => { memory => '16Gi' } }, 'memory over 8Gi' ],
    [ 422, 'resources', { name => 'x', runtime => 'python',
      resources => { memory => 32 * 1024 * 1024 } }, 'memory under 64Mi' ],
    [ 422, 'resources', { name => 'x', runtime => 'python',
      resources => { memory => 'lots' } }, 'memory not a quantity' ],
    [ 422, 'resources', { name => 'x', runtime => 'python',
      resources => { memory => '1..5Gi' } }, 'memory with two points' ],
    [ 422, 'resources', { name => 'x', runtime => 'python',
      resources => { memory => '512Mb' } }, 'memory with an unknown unit' ],
    [ 422, 'resources', { name => 'x', runtime => 'python',
      resources => { ephemeralStorage => '0' } }, 'no storage' ],
    [ 422, 'resources', { name => 'x', runtime => 'python',
      resources => { ephemeralStorage => '20T' } }, 'storage over 10T' ],
    [ 422, 'resources', { name => 'x', runtime => 'python',
      resources => { cpu => '9999999999Ti' } }, 'cpu absurdly large' ],
    [ 422, 'resources', { name => 'x', runtime => 'python',
      resources => { gpu => 1 } }, 'an unknown resource' ],
    [ 400, 'resources', { name => 'x', runtime => 'python',
      resources => '1Gi' }, 'resources a string' ],
    [ 400, 'resources', { name => 'x', runtime => 'python',
      resources => { memory => [ 1 ] } }, 'memory a list' ],
    [ 400, 'ttl', { name => 'x', runtime => 'python', ttl => '30m' },
      'ttl "30m" (the API takes seconds)' ],
    [ 400, 'ttl', { name => 'x', runtime => 'python', ttl => 1.5 },
      'ttl a fraction' ],
    [ 422, 'ttl', { name => 'x', runtime => 'python', ttl => 0 }, 'ttl 0' ],
    [ 422, 'ttl', { name => 'x', runtime => 'python', ttl => 2592001 },
      'ttl over 30 days' ],
);

for my $c (@invalid) {
    my ($status, $field, $body, $name) = @$c;
    is_error(api('POST', '/warmpools', json => $body), $status,
        $status == 400 ? 'bad_request' : 'validation_error', $field,
        "refused: $name");
}

is_error(api('POST', '/warmpools', body => '{"name": "x",',
    headers => { 'Content-Type' => 'application/json' }), 400,
    'bad_request', undef, 'malformed JSON: 400');

my ($count) = $dbh->selectrow_array('SELECT count(*) FROM warm_pools');
is($count, 3, 'no refused pool reached the table');

###############################################################################
# list, get, status

$r = api('GET', '/warmpools');
is($r->{status}, 200, 'GET /warmpools');
is_deeply([ map { $_->{name} } @{$r->{json}{warmPools}} ],
    [ 'base', 'node-hi', 'py' ], '  every pool, by name');
is_deeply((grep { $_->{name} eq 'py' } @{$r->{json}{warmPools}})[0], $py,
    '  each the object the create answered');

for my $id ($py->{id}, 'py') {
    $r = api('GET', "/warmpools/$id");
    is($r->{status}, 200, "GET /warmpools/$id");
    is_deeply($r->{json}, $py, '  the pool');
}

is_error(api('GET', '/warmpools/wp-0000000000000000'), 404, 'not_found',
    undef, 'an unknown id: 404');
is_error(api('GET', '/warmpools/nope/status'), 404, 'not_found', undef,
    'the status of an unknown pool: 404');

$r = api('GET', "/warmpools/$py->{id}/status");
is($r->{status}, 200, 'GET /warmpools/{id}/status');
is_deeply($r->{json}, $py->{status}, '  zeros before the controller reports');

# what the controller writes (lsc_pool_status) is what the API shows

my $status = { availablePods => 1, assignedPods => 2, pendingPods => 0,
    desiredPods => 1, lastScaleTime => '2026-01-02T03:04:05Z',
    conditions => [ { type => 'Ready', status => 'True',
        reason => 'PoolReady', message => 'ready',
        lastTransitionTime => '2026-01-02T03:04:05Z' } ] };
$dbh->do('UPDATE warm_pools SET status = ?::jsonb WHERE name = ?', undef,
    $js->encode($status), 'py');

is_deeply(api('GET', '/warmpools/py/status')->{json}, $status,
    'the status the controller wrote');
is_deeply(api('GET', '/warmpools/py')->{json}{status}, $status,
    '  also in the pool object');

###############################################################################
# patch

$r = api('PATCH', '/warmpools/py', json => { minSize => 2, maxSize => 5,
    preloadPackages => [ 'numpy' ],
    autoScaling => { enabled => JSON::XS::true } });
is($r->{status}, 200, 'PATCH sizes, packages and autoScaling.enabled');
is_deeply([ @{$r->{json}}{qw/ id minSize maxSize preloadPackages /} ],
    [ $py->{id}, 2, 5, [ 'numpy' ] ], '  changed');
is_deeply($r->{json}{autoScaling}, { enabled => JSON::XS::true,
    targetUtilization => 80, scaleDownDelay => 300 },
    '  autoScaling merged key by key');
is_deeply($r->{json}{preloadScripts}, [], '  what was not given stays');

$row = row('py');
is_deeply([ @$row{qw/ min_size max_size /} ], [ 2, 5 ], '  in the row');
is(jsonb($row->{autoscaling}), jsonb('{"enabled": true, '
    . '"targetUtilization": 80, "scaleDownDelay": 300}'),
    '  auto_scaling complete for the controller');

$r = api('PATCH', "/warmpools/$py->{id}", json => { maxSize => 3,
    preloadScripts => [ { name => 'warm', content => 'import json' } ] });
is($r->{status}, 200, 'PATCH by id');
is_deeply([ $r->{json}{minSize}, $r->{json}{maxSize},
    $r->{json}{preloadScripts}[0]{name}, $r->{json}{preloadPackages}[0] ],
    [ 2, 3, 'warm', 'numpy' ], '  maxSize and scripts changed, rest kept');

is_error(api('PATCH', '/warmpools/py', json => { minSize => 4 }), 422,
    'validation_error', 'minSize',
    'PATCH minSize over the stored maxSize: 422');
is_error(api('PATCH', '/warmpools/py', json => { maxSize => 1 }), 422,
    'validation_error', 'minSize',
    'PATCH maxSize under the stored minSize: 422');
is_error(api('PATCH', '/warmpools/py', json => { minSize => 4,
    maxSize => 3 }), 422, 'validation_error', 'minSize',
    'PATCH both, crossed: 422');

for my $f ([ runtime => 'nodejs' ], [ securityLevel => 'high' ],
    [ name => 'py2' ])
{
    is_error(api('PATCH', '/warmpools/py', json => { @$f }), 422,
        'validation_error', $f->[0], "PATCH $f->[0]: cannot be changed");
}

is_error(api('PATCH', '/warmpools/py', json => { size => 1 }), 422,
    'validation_error', 'size', 'PATCH an unknown field: 422');
is_error(api('PATCH', '/warmpools/py', json => { autoScaling =>
    { targetUtilization => 0 } }), 422, 'validation_error',
    'autoScaling.targetUtilization', 'PATCH an invalid value: 422');
is_error(api('PATCH', '/warmpools/nope', json => { minSize => 1 }), 404,
    'not_found', undef, 'PATCH an unknown pool: 404');

$row = row('py');
is_deeply([ @$row{qw/ min_size max_size runtime security_level /} ],
    [ 2, 3, 'python:3.11', 'standard' ], 'refused patches changed nothing');

###############################################################################
# resources and ttl

$r = api('POST', '/warmpools', json => { name => 'sized', runtime => 'python',
    minSize => 0, resources => { cpu => '250m', memory => '1.5Gi',
    ephemeralStorage => '2Gi' }, ttl => 3600 });
is($r->{status}, 201, 'a pool with resources and a ttl: 201');
is_deeply($r->{json}{resources}, { cpu => 0.25, memory => 1610612736,
    ephemeralStorage => 2147483648 }, '  resources in cores and bytes');
is($r->{json}{ttl}, 3600, '  ttl in seconds');
$row = row('sized');
is(jsonb($row->{resources}), jsonb('{"cpu": 0.25, "memory": 1610612736, '
    . '"ephemeralStorage": 2147483648}'), '  so in the row');
is($row->{ttl_s}, 3600, '  ttl_s');

$r = api('POST', '/warmpools', json => { name => 'sized2',
    runtime => 'python', minSize => 0, resources => { cpu => 0.1,
    memory => 67108864 }, ttl => undef });
is($r->{status}, 201, 'the smallest pool there may be, ttl null');
is($js->encode($r->{json}{resources}), '{"cpu":0.1,"memory":67108864}',
    '  0.1 written as such, not as the nearest double');
is($r->{json}{ttl}, undef, '  no ttl');
is(api('DELETE', '/warmpools/sized2')->{status}, 200, '  (removed)');

$r = api('PATCH', '/warmpools/sized', json => { resources => {
    memory => '512Mi' } });
is($r->{status}, 200, 'PATCH resources.memory');
is_deeply($r->{json}{resources}, { cpu => 0.25, memory => 536870912,
    ephemeralStorage => 2147483648 }, '  merged key by key');
is($r->{json}{ttl}, 3600, '  the ttl stays');

$r = api('PATCH', '/warmpools/sized', json => { ttl => 60, maxSize => 2 });
is_deeply([ $r->{status}, $r->{json}{ttl}, $r->{json}{maxSize} ],
    [ 200, 60, 2 ], 'PATCH ttl with another field');
$r = api('PATCH', '/warmpools/sized', json => { minSize => 1 });
is_deeply([ $r->{json}{ttl}, $r->{json}{minSize} ], [ 60, 1 ],
    '  a PATCH without ttl leaves it');
$r = api('PATCH', '/warmpools/sized', json => { ttl => undef });
is_deeply([ $r->{status}, $r->{json}{ttl} ], [ 200, undef ],
    'PATCH ttl null: no ttl any more');
is(row('sized')->{ttl_s}, undef, '  ttl_s NULL');

is_error(api('PATCH', '/warmpools/sized', json => { resources => {
    cpu => 4 } }), 422, 'validation_error', 'resources',
    'PATCH resources out of bounds: 422');
is_error(api('PATCH', '/warmpools/sized', json => { ttl => '1h' }), 400,
    'bad_request', 'ttl', 'PATCH ttl "1h": 400');
is(jsonb(row('sized')->{resources}), jsonb('{"cpu": 0.25, '
    . '"memory": 536870912, "ephemeralStorage": 2147483648}'),
    '  refused patches changed nothing');

# the plan of a create compares numbers: the table keeps them so

for my $bad ('{"cpu": "1"}', '{"memory": "512Mi"}', '[]') {
    ok(!eval { $dbh->do(q{UPDATE warm_pools SET resources = ?::jsonb
        WHERE name = 'sized'}, undef, $bad); 1 },
        "the table refuses resources $bad");
}
ok(!eval { $dbh->do(q{UPDATE warm_pools SET ttl_s = 0
    WHERE name = 'sized'}); 1 }, 'the table refuses a ttl of 0');

###############################################################################
# manifest pools are the files'

$dbh->do(q{INSERT INTO warm_pools (name, runtime, min_size, max_size,
    source) VALUES ('python', 'python:3.11', 2, 10, 'manifest')});

$r = api('GET', '/warmpools/python');
is($r->{status}, 200, 'a manifest pool is listed');
is($r->{json}{source}, 'manifest', '  with source manifest');

is_error(api('PATCH', '/warmpools/python', json => { minSize => 0 }), 409,
    'conflict', undef, 'PATCH of a manifest pool: 409');
is_error(api('DELETE', '/warmpools/python'), 409, 'conflict', undef,
    'DELETE of a manifest pool: 409');
is_deeply([ @{row('python')}{qw/ min_size source /} ], [ 2, 'manifest' ],
    '  the row is untouched');
is_error(api('POST', '/warmpools', json => { name => 'python',
    runtime => 'python' }), 409, 'conflict', undef,
    'POST of a manifest pool\'s name: 409');

###############################################################################
# delete

$r = api('DELETE', '/warmpools/node-hi');
is($r->{status}, 200, 'DELETE /warmpools/node-hi');
my $node_id = $r->{json}{id};
is_deeply($r->{json}, { id => $node_id, name => 'node-hi',
    deleted => JSON::XS::true }, '  says so');
like($node_id // '', qr/^wp-/, '  with the id');
ok(!row('node-hi'), '  the row is gone');
is_error(api('GET', '/warmpools/node-hi'), 404, 'not_found', undef,
    '  GET: 404');
is_error(api('DELETE', '/warmpools/node-hi'), 404, 'not_found', undef,
    '  DELETE again: 404');

$r = api('DELETE', "/warmpools/$py->{id}");
is($r->{status}, 200, 'DELETE by id');
ok(!row('py'), '  the row is gone');

###############################################################################
# the audit log

my $audit = $dbh->selectall_arrayref(q{SELECT action, object, status
    FROM audit_log WHERE action LIKE 'warmpool.%' ORDER BY id});
ok($t->wait_for(sub {
    $audit = $dbh->selectall_arrayref(q{SELECT action, object, status
        FROM audit_log WHERE action LIKE 'warmpool.%' ORDER BY id});
    grep { $_->[0] eq 'warmpool.delete' && $_->[1] eq $py->{id} } @$audit
}), 'mutations are audited');
ok((grep { $_->[0] eq 'warmpool.create' && ($_->[1] // '') eq 'py'
    && $_->[2] == 201 } @$audit), '  the create, with the name');
ok((grep { $_->[0] eq 'warmpool.update' && $_->[2] == 409 } @$audit),
    '  a refused patch, with its status');

###############################################################################
# PostgreSQL away: 503, JSON

$t->pg_stop();

is_error(api('GET', '/warmpools'), 503, 'unavailable', undef,
    'PostgreSQL down: 503');
is_error(api('POST', '/warmpools', json => { name => 'later',
    runtime => 'python' }), 503, 'unavailable', undef,
    '  a create too');

$t->finish();
