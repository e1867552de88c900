#!/usr/bin/perl

# Runner proxying seen from the runner's side: a backend on a unix socket
# stands in for a sandbox's runner and echoes what reaches it.  Only the
# runner token the gateway adds and the headers the runner needs get
# through: no API key (header or ?token=), no forged internal header.
# Routes are checked: owner, expiry, a damaged route; the runner's answer
# (status, body, WebSocket) comes back as it was sent.

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

$t->run_daemon(sub {
    require Mojolicious::Lite;
    require Mojo::Server::Daemon;

    my $app = Mojolicious::Lite->new;
    $app->log->level('fatal');

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

    Mojo::Server::Daemon->new(app => $app, silent => 1,
        listen => ['http+unix://' . ($sock =~ s!/!%2F!gr)])->run;
});

ok($t->wait_for(sub { -S $sock }, 10), 'the stand-in runner listens');

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
    server {
        listen 127.0.0.1:%%PORT_8080%%;
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

$t->finish();
