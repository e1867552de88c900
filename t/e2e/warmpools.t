#!/usr/bin/perl

# A warm pool made through the API is one the controller runs: created
# with POST /warmpools (no manifest anywhere), it fills, its preloads reach
# executions, a create claims from it, its status comes back through the
# API, a PATCH grows it, and a DELETE retires its unclaimed sandboxes while
# the claimed one keeps serving its owner.

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

# everything gone now rather than from an END block, where the exit
# statuses of the clean-up's commands would become the test's own
$t->controller_cleanup();

$t->finish();
