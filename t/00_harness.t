#!/usr/bin/perl

# The harness's own client helpers against real servers: a Perl backend
# (Mojolicious) behind the stock nginx with our module loaded, proxied
# over HTTP and WebSocket, so the helpers other tests rely on are known
# to work before they are used to judge the gateway.

use warnings;
use strict;

use Test::More;

use LSS::Test;

my $t = LSS::Test->new(workers => 2);

my $backend = port(8090);

$t->run_daemon(sub {
    require Mojolicious::Lite;
    require Mojo::Server::Daemon;

    my $app = Mojolicious::Lite->new;
    $app->log->level('fatal');

    $app->routes->get('/echo' => sub {
        my $c = shift;
        $c->render(json => { method => 'GET',
            auth => $c->req->headers->authorization // '' });
    });
    $app->routes->post('/echo' => sub {
        my $c = shift;
        $c->render(data => $c->req->body, format => 'txt');
    });
    $app->routes->websocket('/ws' => sub {
        my $c = shift;
        $c->on(message => sub { $_[0]->send("echo: $_[1]") });
    });

    Mojo::Server::Daemon->new(app => $app, silent => 1,
        listen => ["http://127.0.0.1:$backend"])->run;
});

ok($t->wait_port($backend), 'backend listening');

$t->run(<<'EOF');
%%TEST_GLOBALS%%
events { }
http {
    %%TEST_GLOBALS_HTTP%%
    server {
        listen 127.0.0.1:%%PORT_8080%%;

        location / {
            proxy_pass http://127.0.0.1:%%PORT_8090%%;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $http_connection;
        }
    }
}
EOF

is(scalar($t->worker_pids()), 2, 'two workers');

# request(): status, lowercase headers, decoded JSON, the key as a bearer

my $r = $t->get('/echo', key => 'lsp_x');
is($r->{status}, 200, 'GET through nginx');
like($r->{headers}{'content-type'}, qr/json/, 'headers lowercased');
is($r->{json}{auth}, 'Bearer lsp_x', 'key sent as a bearer token');

$r = $t->request('POST', '/echo', body => 'hello');
is($r->{body}, 'hello', 'POST body round trip');

$r = $t->request('POST', '/echo', json => { a => [1, 2] });
is($r->{body}, '{"a":[1,2]}', 'json => encodes the body');

# http(): raw in, raw out

like($t->http("GET /echo HTTP/1.0\r\nHost: x\r\n\r\n"),
    qr!^HTTP/1\.1 200 !, 'raw request');

# parallel(): every request answered, results in order

my @res = $t->parallel(count => 50, concurrency => 8,
    request => sub { ('POST', '/echo', {}, "n$_[0]") });
is(scalar(grep { $_->{status} == 200 } @res), 50, 'parallel: 50 x 200');
is($res[42]{body}, 'n42', 'parallel: results in request order');

@res = $t->parallel(count => 3, concurrency => 3, port => port(8099),
    timeout => 5);
is(scalar(grep { $_->{status} == 0 && $_->{error} } @res), 3,
    'parallel: a closed port is an error, not a hang');

# websocket(): through nginx's upgrade

my $ws = $t->websocket('/ws');
ok($ws, 'websocket connected through nginx');
ok($ws && $ws->send('ping'), 'message sent');
is($ws && $ws->recv(5), 'echo: ping', 'message echoed');
$ws->close() if $ws;

ok(!$t->websocket('/echo'), 'a non-WebSocket endpoint is refused');
is($t->{ws_status}, 200, 'its handshake status is kept');

# wait_for(): bounded

my $n = 0;
ok($t->wait_for(sub { ++$n >= 3 }, 5), 'wait_for returns once true');
ok(!$t->wait_for(sub { 0 }, 0.2), 'wait_for gives up after its timeout');

$t->finish();
