#!/usr/bin/perl

# A warm pool made through the API is one the controller runs: created
# with POST /warmpools (no manifest anywhere), it fills, its preloads reach
# executions, a create claims from it, its status comes back through the
# API, a PATCH grows it, and a DELETE retires its unclaimed sandboxes while
# the claimed one keeps serving its owner.  Pools with resources: each
# warm sandbox has its pool's limits, a create claims only from a pool
# whose resources are at least what it asks (the smallest such), else it
# starts cold; a pool's ttl renews its unclaimed sandboxes.

use warnings;
use strict;

use Test::More;
use Time::HiRes qw/ sleep /;

use LSS::Test;
use LSS::Stack;

my $t = LSS::Test->new(workers => 2);

$t->stack_start(pools => {}, quota => 5);

my $admin = $t->create_key($t->create_user(name => 'root',
                                           role => 'admin'))->{key};
my $alice = $t->create_key($t->create_user(name => 'alice'))->{key};

sub api {
    my ($method, $path, $key, %o) = @_;
    return $t->request($method, "/api/v1$path", key => $key, timeout => 60,
        %o);
}

$t->wait_for(sub { api(GET => '/user', $admin)->{status} == 200 }, 30);

my $r = api(POST => '/warmpools', $admin, json => {
    name => 'api-py', runtime => 'python', minSize => 1, maxSize => 3,
    preloadPackages => [ 'numpy' ],
    preloadScripts => [ { name => 'setup',
        content => "GREETING = 'warm ' + str(numpy.arange(4).sum())\n" } ],
});
is($r->{status}, 201, 'POST /warmpools: a pool of one') or diag($r->{body});
openapi_ok(POST => '/api/v1/warmpools', $r->{status}, $r->{body});

ok($t->wait_for(sub { $t->ready_count('api-py') >= 1 }, 120),
    'the controller fills it') or diag($t->controller_log());

$r = $t->wait_for(sub {
    my $r = api(GET => '/warmpools/api-py/status', $admin);
    ($r->{json}{availablePods} // 0) >= 1 && $r }, 30);
ok($r, 'its status comes back through the API');
is($r && $r->{json}{conditions}[0]{status}, 'True', '  Ready');
openapi_ok(GET => '/api/v1/warmpools/api-py/status', $r->{status},
    $r->{body}) if $r;

# a create of its runtime (any name of it) claims from it

$r = api(POST => '/sandboxes', $alice, json => { runtime => 'python:3.11' });
is($r->{status}, 201, 'a create claims a warm sandbox') or diag($r->{body});
my $sb = $r->{json} // {};
is($sb->{pool}, 'api-py', '  from the API pool');
is($sb->{phase}, 'Running', '  Running at once');

$r = api(POST => "/sandboxes/$sb->{id}/execute", $alice, json => {
    type => 'code', content => "import sys\n"
        . "print('numpy' in sys.modules, GREETING)" });
is($r->{json} && $r->{json}{stdout}, "True warm 6\n",
    'its preload package and script reached the execution')
    or diag($r->{body});

ok($t->wait_for(sub { $t->ready_count('api-py') >= 1 }, 120),
    'the pool is refilled');

# grown through the API

$r = api(PATCH => '/warmpools/api-py', $admin, json => { minSize => 2 });
is($r->{status}, 200, 'PATCH minSize 2');
ok($t->wait_for(sub { $t->ready_count('api-py') >= 2 }, 120),
    'the controller grows it') or diag($t->controller_log());

# deleted: unclaimed sandboxes retire, the claimed one stays

$r = api(DELETE => '/warmpools/api-py', $admin);
is($r->{status}, 200, 'DELETE /warmpools/api-py');
ok($t->wait_for(sub { $t->ready_count('api-py') == 0 }, 60),
    'its unclaimed sandboxes retire');

my ($unclaimed) = $t->wait_for(sub {
    my ($n) = $t->dbh()->selectrow_array(q{SELECT count(*) FROM sandboxes
        WHERE pool = 'api-py' AND owner IS NULL
        AND phase NOT IN ('Terminated', 'Failed')});
    $n == 0 ? '0 but true' : undef }, 60);
ok($unclaimed, '  and end Terminated');

$r = api(POST => "/sandboxes/$sb->{id}/execute", $alice,
    json => { type => 'code', content => 'print(6 * 7)' });
is($r->{json} && $r->{json}{stdout}, "42\n",
    'the claimed sandbox still serves its owner');

is(api(DELETE => "/sandboxes/$sb->{id}", $alice)->{status}, 202,
    'and is terminated when its owner deletes it');
ok($t->wait_for(sub {
    (api(GET => "/sandboxes/$sb->{id}", $alice)->{json}{phase} // '')
        eq 'Terminated' }, 60), '  Terminated');

# resources: the pool's are the sandbox's, and a create takes a pool only
# if it fits

sub memory_limit {
    my ($id) = @_;
    open(my $f, '<', "/sys/fs/cgroup/memory/llmsafespace/lss-$id/"
        . 'memory.limit_in_bytes') or return "none: $!";
    my $v = <$f>;
    chomp $v;
    return $v;
}

for my $pool ([ big => { cpu => 2, memory => '1Gi' } ],
    [ small => { cpu => '500m', memory => '256Mi' } ])
{
    $r = api(POST => '/warmpools', $admin, json => { name => $pool->[0],
        runtime => 'python', minSize => 1, maxSize => 1,
        resources => $pool->[1] });
    is($r->{status}, 201, "a pool \"$pool->[0]\" with resources")
        or diag($r->{body});
    openapi_ok(POST => '/api/v1/warmpools', $r->{status}, $r->{body});
}

ok($t->wait_for(sub { $t->ready_count('big') >= 1
    && $t->ready_count('small') >= 1 }, 120), 'both filled')
    or diag($t->controller_log());
# the plan prefers a pool with a sandbox ready: wait for both statuses
ok($t->wait_for(sub {
    my @n = grep { (api(GET => "/warmpools/$_/status", $admin)->{json}
        {availablePods} // 0) >= 1 } qw/ big small /;
    @n == 2 }, 30), '  and reported');

my @created;

$r = api(POST => '/sandboxes', $alice, json => { runtime => 'python',
    resources => { cpu => '250m', memory => '200Mi' } });
is($r->{status}, 201, 'a create asking 250m and 200Mi') or diag($r->{body});
push @created, $r->{json}{id};
is($r->{json}{pool}, 'small', '  claims from the smallest pool that fits');
is_deeply($r->{json}{resources}, { cpu => 0.5, memory => 268435456 },
    '  and shows the resources it has: the pool\'s');
is(memory_limit($r->{json}{id}), 268435456, '  its memory cgroup says so');
$r = api(POST => "/sandboxes/$r->{json}{id}/execute", $alice, json => {
    type => 'code', content => "import resource\n"
        . "print(resource.getrlimit(resource.RLIMIT_DATA)[0])" });
is($r->{json} && $r->{json}{stdout}, 268435456 * 3 / 4 . "\n",
    '  and so does an execution inside it (3/4 per process)');

$r = api(POST => '/sandboxes', $alice, json => { runtime => 'python' });
is($r->{status}, 201, 'a create asking nothing') or diag($r->{body});
push @created, $r->{json}{id};
is($r->{json}{pool}, 'big',
    '  gets at least the defaults (1 cpu, 512Mi): not the small pool');
is(memory_limit($r->{json}{id}), 1073741824, '  1Gi in its cgroup');

$r = api(POST => '/sandboxes?wait=60', $alice, json => {
    runtime => 'python', resources => { memory => '2Gi' } });
is($r->{status}, 201, 'a create asking more than any pool has')
    or diag($r->{body});
push @created, $r->{json}{id};
is($r->{json}{pool}, undef, '  starts cold');
is($r->{json}{phase}, 'Running', '  and runs');
is(memory_limit($r->{json}{id}), 2147483648, '  with what it asked');

for my $id (@created) {
    is(api(DELETE => "/sandboxes/$id", $alice)->{status}, 202,
        "$id deleted");
}

# a ttl made through the API reaches the controller

$r = api(POST => '/warmpools', $admin, json => { name => 'brief',
    runtime => 'python', minSize => 1, maxSize => 1, ttl => 4 });
is_deeply([ $r->{status}, $r->{json}{ttl} ], [ 201, 4 ],
    'a pool with a ttl of 4 s');

my $recycled = $t->wait_for(sub {
    $t->dbh()->selectrow_array(q{SELECT id FROM sandboxes
        WHERE pool = 'brief' AND phase = 'Terminated'
        AND reason = 'Recycled'}) }, 120);
ok($recycled, 'its unclaimed sandbox is recycled')
    or diag($t->controller_log());
ok($t->wait_for(sub {
    my ($n) = $t->dbh()->selectrow_array(q{SELECT count(*) FROM sandboxes
        WHERE pool = 'brief' AND phase = 'Running' AND id <> ?}, undef,
        $recycled);
    $n >= 1 }, 120), '  and replaced');

for my $pool (qw/ big small brief /) {
    is(api(DELETE => "/warmpools/$pool", $admin)->{status}, 200,
        "pool $pool deleted");
}

# everything gone now rather than from an END block, where the exit
# statuses of the clean-up's commands would become the test's own
$t->controller_cleanup();

$t->finish();
