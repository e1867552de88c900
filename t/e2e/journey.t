#!/usr/bin/perl

# The user's journey through nginx with raw HTTP and WebSocket, on the real
# stack: Redis, PostgreSQL, the controller with a runc warm pool, nginx with
# the module.  Create from the warm pool, execute, stream with stdin and
# cancel, files (a large upload and download with bounded worker memory),
# packages, the cross-tenant matrix, list and filters, terminate, and a
# controller restart with live sandboxes still serving.

use warnings;
use strict;

use Test::More;
use JSON::XS;
use Digest::SHA qw/ sha256_hex /;
use Time::HiRes qw/ sleep time /;

use LSS::Test;
use LSS::Stack;

my $json = JSON::XS->new->utf8->canonical;

my $t = LSS::Test->new(workers => 2);

$t->stack_start(pools => { python => { minSize => 2, maxSize => 4 } },
                quota => 5);

my $alice = $t->create_key($t->create_user(name => 'alice'))->{key};
my $bob = $t->create_key($t->create_user(name => 'bob'))->{key};
my $admin = $t->create_key($t->create_user(name => 'root',
                                           role => 'admin'))->{key};

sub api { $t->api(@_) }

ok($t->wait_for(sub { $t->ready_count('python') >= 2 }, 120),
   'the warm pool fills') or diag($t->controller_log());

# the workers' connections are up (slow to come under valgrind)
$t->wait_for(sub { ($t->get('/api/v1/user', key => $alice)->{status} // 0)
                   == 200 }, 30);

###############################################################################
# create from the warm pool

my ($st, $sb) = api('POST', '/sandboxes', $alice,
                    json => { runtime => 'python', labels => { t => 'j' } });
is($st, 201, 'create answers 201') or diag(explain($sb));
like($sb->{id}, qr/^sb-[0-9a-z]{8,40}$/, 'with an unguessable id');
is($sb->{phase}, 'Running', 'running at once');
is($sb->{pool}, 'python', 'claimed from the warm pool');
is($sb->{runtime}, 'python:3.11', 'the runtime by its full name');
is_deeply($sb->{labels}, { t => 'j' }, 'labels kept');
is($sb->{endpoints}{execute}, "/api/v1/sandboxes/$sb->{id}/execute",
   'endpoints point at the API');
ok(!grep({ /token|runner/i } keys %$sb), 'no runner token or address');
my $id = $sb->{id};

($st, my $got) = api('GET', "/sandboxes/$id", $alice);
is($st, 200, 'get');
is($got->{user}, $sb->{user}, 'the owner is recorded');

($st, my $status) = api('GET', "/sandboxes/$id/status", $alice);
is($status->{conditions}[0]{type}, 'Ready', 'status has a Ready condition');
is($status->{conditions}[0]{status}, 'True', 'which is True');

###############################################################################
# execute

($st, my $res) = api('POST', "/sandboxes/$id/execute", $alice,
                     json => { type => 'code', language => 'python',
                               content => 'print(1)' });
is($st, 200, 'execute');
is($res->{stdout}, "1\n", 'print(1) prints 1');
is($res->{exitCode}, 0, 'exit code 0');
is($res->{status}, 'completed', 'completed');

($st, $res) = api('POST', "/sandboxes/$id/execute", $alice,
                  json => { type => 'command', content => 'echo',
                            args => ['echo', 'a b', '$HOME'] });
is($res->{stdout}, "a b \$HOME\n", 'a command with argv, no shell');

($st, $res) = api('POST', "/sandboxes/$id/execute", $alice,
                  json => { type => 'code', content => 'print(input())',
                            stdin => "fed\n" });
is($res->{stdout}, "fed\n", 'stdin');

($st, $res) = api('POST', "/sandboxes/$id/execute", $alice,
                  body => '{not json', headers =>
                  { 'Content-Type' => 'application/json' });
is($st, 400, 'the runner refuses bad JSON');
is($res->{error}{code}, 'bad_request', 'as JSON with a code');

###############################################################################
# stream: stdin, output order, cancel

my $ws = $t->websocket("/api/v1/sandboxes/$id/stream?token=$alice");
ok($ws, 'WebSocket with ?token=') or diag($t->{ws_status});

if ($ws) {
    $ws->send($json->encode({ type => 'execute', executionId => 'e1',
        mode => 'code',
        content => "import sys\nfor i in range(3): print(i, flush=True)\n"
                   . "print(input())" }));
    $ws->send($json->encode({ type => 'stdin', executionId => 'e1',
                              content => "echoed\n", eof => JSON::XS::true }));

    my (@types, $out);
    while (my $m = $ws->recv(20)) {
        my $msg = $json->decode($m);
        openapi_schema_ok('StreamServerMessage', $m);
        push @types, $msg->{type};
        $out .= $msg->{content} if $msg->{type} eq 'output';
        last if $msg->{type} eq 'execution_complete';
    }
    is($types[0], 'execution_start', 'execution_start first');
    is($types[-1], 'execution_complete', 'execution_complete last');
    is($out, "0\n1\n2\nechoed\n", 'output in order, stdin read');

    $ws->send($json->encode({ type => 'execute', executionId => 'e2',
        mode => 'code', content => 'import time; time.sleep(60)' }));
    my $started = $ws->recv(20);
    $ws->send($json->encode({ type => 'cancel', executionId => 'e2' }));
    my @after;
    while (my $m = $ws->recv(20)) {
        my $msg = $json->decode($m);
        push @after, $msg->{type};
        last if $msg->{type} eq 'execution_complete';
    }
    ok((grep { $_ eq 'execution_cancelled' } @after), 'cancel is confirmed');

    $ws->send($json->encode({ type => 'ping', timestamp => 7 }));
    my $pong = $json->decode($ws->recv(10) // '{}');
    is($pong->{type}, 'pong', 'ping, pong');
    $ws->close();
}

ok(!$t->websocket("/api/v1/sandboxes/$id/stream?token=$bob"),
   'another user cannot stream');
is($t->{ws_status}, 404, 'and gets 404');

# streams past llmsafespace_stream_limit (32) are refused before the
# runner spends a thread on each; the sandbox keeps serving

my @streams = grep { $_ }
    map { $t->websocket("/api/v1/sandboxes/$id/stream?token=$alice") } 1 .. 32;
is(scalar @streams, 32, '32 streams open on one sandbox');
ok(!$t->websocket("/api/v1/sandboxes/$id/stream?token=$alice"),
   'the 33rd is refused');
is($t->{ws_status}, 429, '  with status 429 (too_many_streams)');
$streams[-1]->send($json->encode({ type => 'ping', timestamp => 1 }));
is($json->decode($streams[-1]->recv(10) // '{}')->{type}, 'pong',
   'the last stream admitted works');
($st, $res) = api('POST', "/sandboxes/$id/execute", $alice,
                  json => { type => 'code', content => 'print(6 * 7)' });
is($res->{stdout}, "42\n", 'and executions go on');
$_->close() for @streams;

###############################################################################
# files: a large upload and download, streamed through nginx

my $size = 48 * 1024 * 1024;
my $data = join('', map { chr(($_ * 7) % 256) } 0 .. 65535) x ($size / 65536);
my @workers = $t->worker_pids();
my %hwm_before = map { $_ => vm_hwm($_) } @workers;

($st, $res) = api('POST', "/sandboxes/$id/files/big?mkdir=1", $alice,
                  body => '');
is($st, 201, 'mkdir');

($st, $res) = api('PUT', "/sandboxes/$id/files/big/data.bin", $alice,
                  body => $data, timeout => 120);
is($st, 201, 'upload 48 MiB');
is($res->{size}, $size, 'all of it');

my $r = $t->request('GET', "/api/v1/sandboxes/$id/files/big/data.bin",
                    key => $alice, timeout => 120);
is($r->{status}, 200, 'download');
is(length($r->{body}), $size, 'all of it back');
is(sha256_hex($r->{body}), sha256_hex($data), 'byte for byte');

my $grown = 0;
for my $w (@workers) {
    my $d = vm_hwm($w) - $hwm_before{$w};
    $grown = $d if $d > $grown;
}
cmp_ok($grown, '<', 16 * 1024, 'no worker held the file (peak RSS grew '
       . "${grown} KiB)");

($st, $res) = api('GET', "/sandboxes/$id/files?path=big", $alice);
is($st, 200, 'list');
is($res->[0]{name}, 'data.bin', 'lists the file');

($st, $res) = api('DELETE', "/sandboxes/$id/files/big/data.bin", $alice);
is($st, 200, 'delete a file');
($st, $res) = api('GET', "/sandboxes/$id/files/big/data.bin", $alice);
is($st, 404, 'gone');
is($res->{error}{code}, 'not_found', 'with a JSON error');

($st, $res) = api('PUT', "/sandboxes/$id/files/sp%20ace%3F.txt", $alice,
                  body => 'x');
is($res->{path}, 'sp ace?.txt', 'escaped names arrive as named');

###############################################################################
# packages (no network here: a clear failure result)

($st, $res) = api('POST', "/sandboxes/$id/packages", $alice,
                  json => { packages => ['surely-not-a-package-lss'],
                            manager => 'pip' }, timeout => 200);
is($st, 200, 'packages answers like an execution');
isnt($res->{exitCode}, 0, 'an install that cannot succeed says so');
ok(defined $res->{stderr}, 'with its output');

###############################################################################
# another user: every route is 404, as for a missing sandbox

my $missing = 'sb-00000000000000000000';

for my $case (['GET', ''], ['GET', '/status'], ['DELETE', ''],
              ['POST', '/execute', { type => 'code', content => '1' }],
              ['POST', '/packages', { packages => ['x'] }],
              ['GET', '/files?path='], ['GET', '/files/a'],
              ['PUT', '/files/a'], ['DELETE', '/files/a'])
{
    my ($m, $tail, $body) = @$case;
    my ($s1, $b1) = api($m, "/sandboxes/$id$tail", $bob,
                        $body ? (json => $body) : (body => ''));
    my ($s2, $b2) = api($m, "/sandboxes/$missing$tail", $bob,
                        $body ? (json => $body) : (body => ''));
    is($s1, 404, "$m $tail of another user's sandbox: 404");
    is($b1->{error}{code}, $b2->{error}{code}, "$m $tail: same as missing");
}

($st, $res) = api('GET', "/sandboxes/$id", $admin);
is($st, 200, 'an admin sees any sandbox');

###############################################################################
# list and filters

my ($st2, $sb2) = api('POST', '/sandboxes', $alice,
                      json => { runtime => 'python:3.11',
                                labels => { t => 'other' } });
is($st2, 201, 'a second sandbox');

($st, $res) = api('GET', '/sandboxes', $alice);
is($res->{total}, 2, 'alice lists her two');
($st, $res) = api('GET', '/sandboxes?label=t%3Dj', $alice);
is_deeply([map { $_->{id} } @{$res->{sandboxes}}], [$id], 'label filter');
($st, $res) = api('GET', '/sandboxes?phase=Terminated', $alice);
is($res->{total}, 0, 'phase filter');
($st, $res) = api('GET', '/sandboxes?phase=Bogus', $alice);
is($st, 422, 'an unknown phase is refused');
($st, $res) = api('GET', '/sandboxes?label=t%3D%00', $alice);
is($st, 422, 'a label with NUL is refused, not a database error');
($st, $res) = api('GET', '/sandboxes', $bob);
is($res->{total}, 0, 'bob sees none of them');
($st, $res) = api('GET', '/sandboxes', $admin);
cmp_ok($res->{total}, '>=', 2, 'the admin sees them');

###############################################################################
# the controller goes away: live sandboxes keep serving, claims still work

$t->controller_stop();

($st, $res) = api('POST', "/sandboxes/$id/execute", $alice,
                  json => { type => 'code', content => 'print(2)' });
is($res->{stdout}, "2\n", 'executes with the controller down');

my $ready = $t->ready_count('python');
if ($ready > 0) {
    ($st, my $sb3) = api('POST', '/sandboxes', $alice,
                         json => { runtime => 'python' });
    is($st, 201, 'a claim works with the controller down');
    is($sb3->{phase}, 'Running', 'and is running');
    ($st, $res) = api('POST', "/sandboxes/$sb3->{id}/execute", $alice,
                      json => { type => 'code', content => 'print(3)' });
    is($res->{stdout}, "3\n", 'and executes');
} else {
    fail('the pool had a ready sandbox left');
}

$t->controller_start();

ok($t->wait_for(sub {
    my ($s, $b) = api('POST', "/sandboxes/$id/execute", $alice,
                      json => { type => 'code', content => 'print(4)' });
    $b && ($b->{stdout} // '') eq "4\n";
}, 30), 'still serving after the controller restarted');

###############################################################################
# terminate

($st, $res) = api('DELETE', "/sandboxes/$id", $alice);
is($st, 202, 'delete answers 202');
is($res->{phase}, 'Terminating', 'terminating');

($st, $res) = api('POST', "/sandboxes/$id/execute", $alice,
                  json => { type => 'code', content => 'print(5)' });
is($st, 409, 'no execution reaches a sandbox being deleted');
like($res->{error}{details}{phase}, qr/^Terminat(ing|ed)$/, 'the phase is named');

ok($t->wait_for(sub {
    my ($s, $b) = api('GET', "/sandboxes/$id", $alice);
    ($b->{phase} // '') eq 'Terminated';
}, 60), 'the record ends Terminated');

($st, $res) = api('DELETE', "/sandboxes/$id", $alice);
is($st, 200, 'deleting it again is harmless');

$t->finish();


sub vm_hwm {
    my ($pid) = @_;
    open(my $f, '<', "/proc/$pid/status") or return 0;
    while (<$f>) {
        return $1 if /^VmHWM:\s+(\d+)/;
    }
    return 0;
}
