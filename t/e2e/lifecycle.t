#!/usr/bin/perl

# Sandbox lifecycle through nginx on the real stack: create validation,
# a cold create under gVisor (runsc) waited for, a cold create polled, the
# expiry of a sandbox's timeout, the per-user quota, and a deleted user's
# sandboxes terminated.

use warnings;
use strict;

use Test::More;
use JSON::XS;

use LSS::Test;
use LSS::Stack;

my $json = JSON::XS->new->utf8->canonical;

my $t = LSS::Test->new(workers => 1);

$t->stack_start(pools => { python => { minSize => 2, maxSize => 3 } },
                quota => 3, key_ttl => '1s');

my $alice = $t->create_key($t->create_user(name => 'alice'))->{key};
my $bob_id = $t->create_user(name => 'bob');
my $bob = $t->create_key($bob_id)->{key};
my $admin = $t->create_key($t->create_user(name => 'root',
                                           role => 'admin'))->{key};

sub api { $t->api(@_) }

sub phase_of {
    my ($id, $key) = @_;
    my ($s, $b) = api('GET', "/sandboxes/$id", $key // $alice);
    return $b->{phase} // '';
}

###############################################################################
# validation: every refusal names its field

for my $case ([{ runtime => 'cobol' }, 422, 'runtime'],
              [{}, 422, 'runtime'],
              [{ runtime => 7 }, 400, 'runtime'],
              [{ runtime => 'python', timeout => 'long' }, 400, 'timeout'],
              [{ runtime => 'python', timeout => 0 }, 422, 'timeout'],
              [{ runtime => 'python', timeout => 86401 }, 422, 'timeout'],
              [{ runtime => 'python', color => 'red' }, 422, 'color'],
              [{ runtime => 'python', securityLevel => 'max' }, 422,
               'securityLevel'],
              [{ runtime => 'python', securityLevel => 'custom' }, 422,
               'securityLevel'],
              [{ runtime => 'python', profileRef => 'nope' }, 422,
               'profileRef'],
              [{ runtime => 'python', labels => { 'a b' => 'x' } }, 422,
               'labels'],
              [{ runtime => 'python', labels => { a => 1 } }, 400, 'labels'],
              [{ runtime => 'python', resources => { memory => 'lots' } },
               422, 'resources'],
              [{ runtime => 'python', resources => { gpu => 1 } }, 422,
               'resources'],
              [{ runtime => 'python',
                 networkAccess => { egress => [{ domain => 'a b' }] } },
               422, 'networkAccess'],
              [{ runtime => 'python',
                 networkAccess => { egress => [{ domain => '*.pypi.org' }] } },
               422, 'networkAccess'],
              [{ runtime => 'python',
                 networkAccess => { egress => [{ domain => 'pypi.org',
                                                 ports => [0] }] } },
               422, 'networkAccess'],
              [{ runtime => 'python', useWarmPool => 'yes' }, 400,
               'useWarmPool'])
{
    my ($body, $want, $field) = @$case;
    my ($s, $b) = api('POST', '/sandboxes', $alice, json => $body);
    is($s, $want, "create " . $json->encode($body) . ": $want");
    is($b->{error}{details}{field}, $field, "naming \"$field\"");
}

my ($st, $b) = api('POST', '/sandboxes?wait=121', $alice,
                   json => { runtime => 'python' });
is($st, 422, 'wait over 120 s is refused');

($st, $b) = api('POST', '/sandboxes', $alice, body => '{"runtime":',
                headers => { 'Content-Type' => 'application/json' });
is($st, 400, 'malformed JSON: 400');

is($t->dbh()->selectrow_array(q{SELECT count(*) FROM sandboxes }
                              . q{WHERE owner IS NOT NULL}), 0,
   'no refused create left a record');

###############################################################################
# cold, under gVisor, waited for

ok($t->wait_for(sub { $t->ready_count('python') >= 1 }, 120),
   'the warm pool has a sandbox') or diag($t->controller_log());

($st, my $high) = api('POST', '/sandboxes?wait=110', $alice,
                      json => { runtime => 'python',
                                securityLevel => 'high',
                                labels => { kind => 'cold' } });
is($st, 201, 'a high sandbox is created cold and waited for')
    or diag(explain($high), $t->controller_log());
is($high->{phase}, 'Running', 'running when answered');
is($high->{pool}, undef, 'not from a pool');
is($high->{securityLevel}, 'high', 'at level high');

my $runsc = `runsc --root ${\ $t->controller_state() }/runsc list 2>&1`;
like($runsc, qr/lss-\Q$high->{id}\E/, 'in a gVisor (runsc) container');

($st, $b) = api('POST', "/sandboxes/$high->{id}/execute", $alice,
                json => { type => 'code', content => 'print(6*7)' });
is($b->{stdout}, "42\n", 'and it executes');

# Hostile code under gVisor ends as under runc: the execution, not the
# sandbox (the Sentry is the whole sandbox on the host; see
# docs/runner.md, "The memory guard").
($st, $b) = api('POST', "/sandboxes/$high->{id}/execute", $alice,
                json => { type => 'code', timeout => 5, content =>
                    "import os\nwhile True:\n    try:\n        os.fork()\n"
                    . "    except OSError:\n        pass" });
is($st, 200, 'a fork bomb is answered') or diag(explain($b));
like($b->{status} // '', qr/^(timeout|failed)$/, 'as ended');

($st, $b) = api('POST', "/sandboxes/$high->{id}/execute", $alice,
                json => { type => 'code', timeout => 20, content =>
                    "import os, time\nfor i in range(3):\n"
                    . "    if os.fork() == 0:\n"
                    . "        b = [b'x' * (1 << 20) for _ in range(300)]\n"
                    . "        time.sleep(10)\n        os._exit(0)\n"
                    . "for i in range(3):\n    os.wait()\nprint('survived')" });
is($st, 200, 'processes filling the memory together are answered')
    or diag(explain($b));
is($b->{status}, 'failed', 'as failed');
like($b->{error} // '', qr/memory limit/, 'saying the memory limit');
unlike($b->{stdout} // '', qr/survived/, 'before they finished');

($st, $b) = api('GET', "/sandboxes/$high->{id}", $alice);
is($b->{phase}, 'Running', 'the sandbox still runs');
($st, $b) = api('POST', "/sandboxes/$high->{id}/execute", $alice,
                json => { type => 'code', content => 'print(6*7)' });
is($b->{stdout}, "42\n", 'and executes');

###############################################################################
# cold, polled

($st, my $cold) = api('POST', '/sandboxes', $alice,
                      json => { runtime => 'python', useWarmPool => \0 });
is($st, 202, 'without waiting a cold create answers 202');
like($cold->{phase}, qr/^(Pending|Creating)$/, 'still starting');
is($cold->{pool}, undef, 'not claimed although the pool had one');

my ($r) = (api('GET', "/sandboxes/$cold->{id}", $alice))[2];
ok($t->wait_for(sub { phase_of($cold->{id}) eq 'Running' }, 90),
   'polling sees it Running');

###############################################################################
# quota: 3 live sandboxes per user

($st, $b) = api('POST', '/sandboxes', $alice,
                json => { runtime => 'python', timeout => 3 });
is($st, 201, 'the third fits');
my $short = $b->{id};

($st, $b) = api('POST', '/sandboxes', $alice,
                json => { runtime => 'python' });
is($st, 403, 'the fourth does not');
is($b->{error}{code}, 'quota_exceeded', 'quota_exceeded');
is($b->{error}{details}{limit}, 3, 'naming the limit');
is($b->{error}{details}{current}, 3, 'and the count');

###############################################################################
# expiry: the 3 s timeout ends the sandbox

ok($t->wait_for(sub { phase_of($short) eq 'Terminated' }, 60),
   'an expired sandbox ends Terminated');
($st, $b) = api('GET', "/sandboxes/$short", $alice);
is($b->{reason}, 'Expired', 'because it expired');
($st, $b) = api('POST', "/sandboxes/$short/execute", $alice,
                json => { type => 'code', content => 'print(1)' });
is($st, 409, 'it takes no more executions');

($st, $b) = api('POST', '/sandboxes', $alice,
                json => { runtime => 'python' });
is($st, 201, 'and the quota has room again');

###############################################################################
# a deleted user's sandboxes are terminated

ok($t->wait_for(sub { $t->ready_count('python') >= 1 }, 120),
   'the pool refilled');
($st, my $bobs) = api('POST', '/sandboxes', $bob,
                      json => { runtime => 'python' });
is($st, 201, 'bob has a sandbox');

($st, $b) = api('DELETE', "/users/$bob_id", $admin);
is($st, 200, 'the admin deletes bob');
is($b->{terminatedSandboxes}, 1, 'which terminates his sandbox');
ok($t->wait_for(sub { phase_of($bobs->{id}, $admin) eq 'Terminated' }, 60),
   'it ends Terminated');

$t->finish();
