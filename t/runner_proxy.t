#!/usr/bin/perl

# Runner proxying seen from the runner's side: a backend on a unix socket
# stands in for a sandbox's runner and echoes what reaches it.  Only the
# runner token the gateway adds and the headers the runner needs get
# through: no API key (header or ?token=), no forged internal header.
# Routes are checked: owner, expiry, a damaged route; the runner's answer
# (status, body, WebSocket) comes back as it was sent.  Another user's
# sandbox is answered exactly as a missing one; execute and packages
# bodies are checked field by field before they leave; streams per
# sandbox are capped (llmsafespace_stream_limit).

use warnings;
use strict;

use Test::More;
use JSON::XS;

use LSS::Test;
use LSS::Stack;

my $json = JSON::XS->new->utf8->canonical;

my $t = LSS::Test->new(workers => 1);
my $sock = $t->testdir() . '/runner.sock';

$t->redis_start();
$t->pg_start();
$t->dbh()->do($t->read_file("$LSS::Test::TOP/sql/controller.sql"));

ok($t->stand_in_runner($sock, sub {
    my ($app) = @_;

    my $echo = sub {
        my $c = shift;
        my %h = map { lc($_) => $c->req->headers->header($_) }
                @{$c->req->headers->names};
        $c->res->headers->header('Set-Cookie' => 'runner=1');
        $c->res->headers->header('X-Accel-Redirect' => '/api/v1/user');
        $c->render(status => $c->param('status') // 200,
                   json => { method => $c->req->method,
                             path => $c->req->url->path->to_string,
                             query => $c->req->url->query->to_string,
                             headers => \%h,
                             length => length($c->req->body) });
    };

    $app->routes->websocket('/stream' => sub {
        my $c = shift;
        my $tok = $c->req->headers->header('X-LLMSafeSpace-Runner-Token');
        $c->on(message => sub { $_[0]->send("runner: $_[1] ($tok)") });
    });
    $app->routes->any('/*rest' => $echo);
}), 'the stand-in runner listens');

$t->run(<<"EOF");
%%TEST_GLOBALS%%
user root;
events { }
http {
    %%TEST_GLOBALS_HTTP%%
    llmsafespace_redis %%REDIS%%;
    llmsafespace_postgres "%%PG%%";
    llmsafespace_key_cache zone=keys:1m;
    ${\ $t->sandbox_conf() }
    llmsafespace_stream_limit 2;
    server {
        listen 127.0.0.1:%%PORT_8080%%;
        client_max_body_size 100m;
        location /api/v1/ {
            llmsafespace_api;
        }
        ${\ $t->runner_location() }
    }
}
EOF

my $alice_id = $t->create_user(name => 'alice');
my $alice = $t->create_key($alice_id)->{key};
my $bob = $t->create_key($t->create_user(name => 'bob'))->{key};

my $token = 'ab' x 32;
my $id = 'sb-echo00000000000001';

sub route {
    my (%f) = @_;
    $t->redis()->hset("lss:sb:$id", %f);
}

route(owner => $alice_id, runner => "unix:$sock", token => $token,
      expires => (time() + 3600) * 1000, runtime => 'python', pool => '',
      phase => 'Running');

# the workers connect to PostgreSQL once started (slowly under valgrind)
ok($t->wait_for(sub {
    $t->get('/api/v1/user', key => $alice)->{status} == 200 }, 10),
   'the gateway looks keys up');

sub call {
    my ($method, $path, %o) = @_;
    my $r = $t->request($method, "/api/v1/sandboxes/$id$path", %o);
    return ($r->{status}, eval { $json->decode($r->{body}) }, $r);
}

my ($st, $b, $r) = call('POST', '/execute?x=1&token=leak&y=2',
    key => $alice, json => { content => 'x' },
    headers => { 'X-LLMSafeSpace-Runner-Token' => 'forged',
                 'X-LLMSafeSpace-User' => 'admin',
                 'X-Forwarded-For' => '1.2.3.4',
                 'Cookie' => 'session=secret' });
is($st, 200, 'proxied to the runner');
is($b->{path}, '/execute', 'at the runner\'s path');
is($b->{query}, 'x=1&y=2', 'the arguments, without ?token=');
is($b->{headers}{'x-llmsafespace-runner-token'}, $token,
   'the gateway\'s token, not the forged one');
ok(!exists $b->{headers}{authorization}, 'no API key');
ok(!exists $b->{headers}{'x-llmsafespace-user'},
   'no other internal header');
ok(!exists $b->{headers}{cookie}, 'no cookies');
ok(!exists $b->{headers}{'x-forwarded-for'}, 'no client headers at all');
is($b->{headers}{'content-type'}, 'application/json', 'but the type');
is($b->{length}, length('{"content":"x"}'), 'and the whole body');
unlike($r->{raw}, qr/Set-Cookie/i, 'the runner cannot set cookies');
is($r->{headers}{'x-content-type-options'}, 'nosniff',
   'what a runner sends is never sniffed');
like($r->{headers}{'content-security-policy'} // '', qr/^sandbox\b/,
   'nor rendered as the API\'s page');
ok(index($r->{body}, '"method"') >= 0,
   'X-Accel-Redirect from a runner is ignored');

($st, $b) = call('GET', '/files/a%20b/c%3Fd.txt', key => $alice);
is($b->{path}, '/files/a%20b/c%3Fd.txt', 'file paths stay escaped');

($st, $b) = call('GET', '/files?path=x', key => $alice);
is($b->{path}, '/files', 'list');

($st, $b) = call('POST', '/execute?status=418', key => $alice, body => '');
is($st, 418, 'the runner\'s status comes back');
is($b->{method}, 'POST', 'with its body');

($st, $b) = call('PATCH', '/execute', key => $alice, body => '');
is($st, 405, 'other methods: 405');
is($b->{error}{code}, 'method_not_allowed', 'as JSON');

my $ws = $t->websocket("/api/v1/sandboxes/$id/stream?token=$alice");
ok($ws, 'WebSocket upgrade through the runner location');
if ($ws) {
    $ws->send('hi');
    is($ws->recv(5), "runner: hi ($token)", 'frames both ways, token added');
    $ws->close();
}

# execute and packages bodies: unknown fields and wrong types never leave

for my $case (
    [ '/execute', { content => 'x', langauge => 'bash' }, 422, 'langauge' ],
    [ '/execute', { content => 'x', user => 'root' }, 422, 'user' ],
    [ '/execute', { content => 'x', timeout => '5' }, 400, 'timeout' ],
    [ '/execute', { content => [ 'x' ] }, 400, 'content' ],
    [ '/execute', { content => 'x', env => [ 'A=1' ] }, 400, 'env' ],
    [ '/execute', { type => 'command', args => 'ls' }, 400, 'args' ],
    [ '/execute', { content => 'x', context => 5 }, 400, 'context' ],
    [ '/packages', { packages => ['x'], manager => 'pip', index => 'u' },
      422, 'index' ],
    [ '/packages', { packages => 'x' }, 400, 'packages' ],
)
{
    my ($tail, $body, $status, $field) = @$case;
    ($st, $b) = call('POST', $tail, key => $alice, json => $body);
    is($st, $status, "$tail with $field: $status");
    is($b->{error}{details}{field}, $field, '  naming the field');
    ok(!exists $b->{path}, '  not proxied');
}

($st, $b) = call('POST', '/execute', key => $alice,
    body => '{"content": "x",', headers => {
        'Content-Type' => 'application/json' });
is($st, 400, 'malformed JSON: 400');

my $full = { type => 'code', language => 'python', content => 'print(1)',
             timeout => 5, env => { A => '1' }, workingDir => 'w',
             stdin => 'in', context => undef };
($st, $b) = call('POST', '/execute', key => $alice, json => $full);
is($st, 200, 'every field of an execute: proxied');
is($b->{length}, length(encode_json($full)), '  the body whole');
($st, $b) = call('POST', '/execute', key => $alice,
    json => { type => 'command', args => ['ls', '-l'] });
is($st, 200, 'a command with args: proxied');
($st, $b) = call('POST', '/packages', key => $alice,
    json => { packages => ['numpy'], manager => 'pip' });
is($st, 200, 'packages: proxied');

my $stdin = { content => 'cat', stdin => 'x' x (3 * 1024 * 1024) };
($st, $b) = call('POST', '/execute', key => $alice, json => $stdin);
is($st, 200, 'an execute with 3 MiB of stdin: proxied');
is($b->{length}, length(encode_json($stdin)), '  whole');

($st, $b) = call('POST', '/execute', key => $alice,
    body => '{"content": "' . ('x' x (8 * 1024 * 1024)) . '"}');
is($st, 413, 'an execute body past the runner\'s 8 MiB: 413');
is($b->{error}{code}, 'payload_too_large', '  as JSON');

my $chunked = $t->http("POST /api/v1/sandboxes/$id/execute HTTP/1.1\r\n"
    . "Host: x\r\nAuthorization: Bearer $alice\r\nConnection: close\r\n"
    . "Transfer-Encoding: chunked\r\n\r\n"
    . join('', map { sprintf("%x\r\n%s\r\n", 65536, 'x' x 65536) } 1 .. 129)
    . "0\r\n\r\n");
like($chunked, qr!^HTTP/1\.1 413.*payload_too_large!s,
     '  also chunked');

# streams per sandbox: the limit, then one more when one closes

my @ws = map { $t->websocket("/api/v1/sandboxes/$id/stream?token=$alice") }
         1 .. 2;
ok($ws[0] && $ws[1], 'streams up to the limit open');
$ws[1]->send('two') if $ws[1];
is($ws[1] && $ws[1]->recv(5), "runner: two ($token)", '  and work');

my $third = $t->websocket("/api/v1/sandboxes/$id/stream?token=$alice");
ok(!$third, 'one more is refused');
is($t->{ws_status}, 429, '  with status 429');
my $refused = eval { $json->decode($t->{ws_body} // '') } // {};
is($refused->{error}{code}, 'too_many_streams', '  too_many_streams');
is($refused->{error}{details}{limit}, 2, '  with the limit');

($st, $b) = call('POST', '/execute', key => $alice, json => { content => 'x' });
is($st, 200, 'executions are not streams');

$ws[0]->close();
my $again = $t->wait_for(sub {
    $t->websocket("/api/v1/sandboxes/$id/stream?token=$alice") }, 10);
ok($again, 'a closed stream makes room');
$_ && $_->close() for $again, $ws[1];

# another user's sandbox: the very answer of a missing one

my $missing = 'sb-nosuch000000000001';
is(length($missing), length($id), 'ids of one length');

for my $tail ('/execute', '/files/x', '/files', '/stream', '/packages') {
    my $method = $tail =~ m!^/(?:execute|packages)$! ? 'POST' : 'GET';
    my @r = map {
        my $r = $t->request($method, "/api/v1/sandboxes/$_$tail",
                            key => $bob, json => { content => 'x' });
        delete $r->{headers}{date};
        $r->{body} =~ s/\Q$_\E/ID/g;
        $r
    } $id, $missing;
    is($r[0]{status}, 404, "$method $tail of another user: 404");
    is_deeply([ @{$r[0]}{qw/status body headers/} ],
              [ @{$r[1]}{qw/status body headers/} ],
              '  status, body and headers those of a missing id');
}

# ownership, expiry, damaged routes

($st, $b) = call('POST', '/execute', key => $bob, body => '');
is($st, 404, 'another user: 404');
is($b->{error}{message}, "sandbox $id not found", 'as for a missing one');

($st, $b) = call('POST', '/execute', body => '');
is($st, 401, 'no key: 401');

my ($st2, $b2) = $t->request('POST',
    '/api/v1/sandboxes/sb-nosuch0000000001/execute', key => $alice,
    body => '')->@{qw/status body/};
is($st2, 404, 'no route and no record: 404');

route(expires => (time() - 10) * 1000);
($st, $b) = call('POST', '/execute', key => $alice, body => '');
is($st, 409, 'expired: 409');
is($b->{error}{details}{phase}, 'Terminating', 'named Terminating');

route(expires => (time() + 3600) * 1000, runner => 'unix:/tmp/x:/y');
($st, $b) = call('POST', '/execute', key => $alice, body => '');
is($st, 502, 'a damaged route is refused');
is($b->{error}{code}, 'unavailable', 'as JSON');

route(runner => "unix:$sock", token => 'nothex');
($st, $b) = call('POST', '/execute', key => $alice, body => '');
is($st, 502, 'a damaged token is refused');

route(token => $token, owner => '');
($st, $b) = call('POST', '/execute', key => $alice, body => '');
is($st, 404, 'an unclaimed warm sandbox belongs to nobody');

$t->expect_alert(qr/gone\.sock failed/);
route(owner => $alice_id, runner => 'unix:' . $t->testdir() . '/gone.sock');
($st, $b) = call('POST', '/execute', key => $alice, body => '');
is($st, 502, 'a runner that is not there: 502');
is($b->{error}{code}, 'unavailable', 'as JSON');

# a route missing: the record decides

$t->redis()->del("lss:sb:$id");
$t->dbh()->do(q{INSERT INTO sandboxes (id, owner, runtime, phase) }
              . q{VALUES (?, ?, 'python', 'Creating')}, undef,
              $id, $alice_id);
($st, $b) = call('POST', '/execute', key => $alice, body => '');
is($st, 409, 'a sandbox still starting: 409');
is($b->{error}{details}{phase}, 'Creating', 'named Creating');

$t->dbh()->do(q{UPDATE sandboxes SET phase = 'Running' WHERE id = ?},
              undef, $id);
($st, $b) = call('POST', '/execute', key => $alice, body => '');
is($st, 503, 'running but without a route: 503, retry');

($st, $b) = call('POST', '/execute', key => $bob, body => '');
is($st, 404, 'still 404 for another user');

# the same path, not only the same answer: without PostgreSQL, another
# user's id waits on the same query as a missing one and fails the same

$t->redis()->hset("lss:sb:$id", owner => $alice_id, runner => "unix:$sock",
                  token => $token, expires => (time() + 3600) * 1000);
$t->pg_stop();
my @down = map {
    my $r = $t->request('POST', "/api/v1/sandboxes/$_/execute", key => $bob,
                        json => { content => 'x' });
    delete $r->{headers}{date};
    $r->{body} =~ s/\Q$_\E/ID/g;
    $r
} $id, 'sb-nosuch000000000001';
is($down[1]{status}, 503, 'PostgreSQL down: a missing id cannot be told');
is_deeply([ @{$down[0]}{qw/status body headers/} ],
          [ @{$down[1]}{qw/status body headers/} ],
          '  nor another user\'s: the very same answer');
$t->pg_start();

$t->finish();
