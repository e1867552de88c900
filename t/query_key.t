#!/usr/bin/perl

# An API key in the query string: one definition of the "token" argument
# (its name in any case, %XX-encoded or not) for finding the key, for
# redacting it from everything nginx logs and for stripping it from what
# reaches a runner; and a key in the query is accepted only on the
# WebSocket stream route, never on another route, Upgrade header or not.

use warnings;
use strict;

use Test::More;
use JSON::XS;

use LSS::Test;
use LSS::Stack;

my $t = LSS::Test->new(workers => 2);
my $sock = $t->testdir() . '/runner.sock';

$t->redis_start();
$t->pg_start();
$t->dbh()->do($t->read_file("$LSS::Test::TOP/sql/controller.sql"));

# the stand-in runner says on each stream what reached it
ok($t->stand_in_runner($sock, sub {
    my ($app) = @_;

    $app->routes->websocket('/stream' => sub {
        my $c = shift;
        $c->on(message => sub {
            $_[0]->send('query=' . $c->req->url->query->to_string);
        });
    });
    $app->routes->any('/*rest' => sub {
        my $c = shift;
        $c->render(json => { query => $c->req->url->query->to_string });
    });
}), 'the stand-in runner listens');

$t->run(<<"EOF");
%%TEST_GLOBALS%%
user root;
events { }
http {
    %%TEST_GLOBALS_HTTP%%

    # every variable that could show the query string
    log_format all '"\$llmsafespace_request" "\$request" "\$request_uri" '
                   '"\$args" "\$query_string" "\$arg_token" \$status '
                   '"\$http_referer"';

    llmsafespace_redis %%REDIS%%;
    llmsafespace_postgres "%%PG%%";
    llmsafespace_key_cache zone=keys:1m;
    ${\ $t->sandbox_conf() }
    server {
        listen 127.0.0.1:%%PORT_8080%%;
        access_log %%TESTDIR%%/all.log all;
        location /api/v1/ {
            llmsafespace_api;
        }
        ${\ $t->runner_location() }
    }
}
EOF

my $alice_id = $t->create_user(name => 'alice');
my $alice = $t->create_key($alice_id);
my $admin = $t->create_key($t->create_user(name => 'root', role => 'admin'));

my $id = 'sb-query0000000000001';
$t->redis()->hset("lss:sb:$id", owner => $alice_id, runner => "unix:$sock",
    token => 'ab' x 32, expires => (time() + 3600) * 1000,
    runtime => 'python', pool => '', phase => 'Running');

my %ws = (Upgrade => 'websocket', Connection => 'Upgrade',
    'Sec-WebSocket-Version' => 13,
    'Sec-WebSocket-Key' => 'dGhlIHNhbXBsZSBub25jZQ==');

# every spelling of the argument's name that the lookup could take
my @names = ('token', 'TOKEN', 'Token', 'tOkEn', '%74oken', 'TOK%45N');

###############################################################################
# not on other routes, whatever the spelling and the headers

for my $name (@names) {
    my $r = $t->get("/api/v1/user?$name=$alice->{key}", headers => \%ws);
    is($r->{status}, 401, "?$name= with Upgrade on /user: 401");
    like($r->{json}{error}{message} // '', qr/stream/,
        '... saying where a query key is accepted');
}

my $r = $t->request('POST', "/api/v1/user/apikeys?Token=$alice->{key}",
    headers => \%ws, json => { name => 'minted' });
is($r->{status}, 401, 'no key minted with ?Token= and an Upgrade header');
is($t->dbh()->selectrow_array(
    q{SELECT count(*) FROM api_keys WHERE name = 'minted'}), 0,
    '... none in the database');

$r = $t->request('POST', "/api/v1/sandboxes/$id/execute?token=$alice->{key}",
    headers => \%ws, body => '{}');
is($r->{status}, 401, 'nor on execute, a runner route');

$r = $t->get("/api/v1/sandboxes/$id/stream?token=$alice->{key}");
is($r->{status}, 401, 'nor on the stream route without a WebSocket upgrade');

# after a '#', not an argument to nginx: no key taken, none logged either
my $raw = $t->http("GET /api/v1/user#x?TOKEN=$alice->{key} HTTP/1.1\r\n"
    . "Host: x\r\nUpgrade: websocket\r\nConnection: close\r\n\r\n");
like($raw, qr!^HTTP/1.1 401!, 'a key after a fragment is not taken');

# a Referer naming a URL with a key (a page of a browser client)
$r = $t->get('/api/v1/nosuch', key => $alice->{key}, headers => {
    Referer => "http://app/api/v1/sandboxes/$id/stream?Token=$admin->{key}" });
is($r->{status}, 404, 'a request with such a Referer');

# the header still works everywhere, and wins over a query key
$r = $t->get("/api/v1/user?TOKEN=$admin->{key}", key => $alice->{key});
is($r->{json}{keyId}, $alice->{id}, 'the Authorization header decides');

###############################################################################
# on the stream route: any spelling is the key, and the runner sees none

for my $name (@names) {
    my $ws = $t->websocket(
        "/api/v1/sandboxes/$id/stream?a=1&$name=$alice->{key}&b=2");
    ok($ws, "?$name= opens the stream");
    next unless $ws;
    $ws->send('hi');
    is($ws->recv(5), 'query=a=1&b=2', '... and does not reach the runner');
    $ws->close();
}

my $ws = $t->websocket("/api/v1/sandboxes/$id/stream?token=$admin->{key}"
    . "x");
ok(!$ws, 'a malformed query key is refused');
is($t->{ws_status}, 401, '... 401');

# execute with a header key: whatever token-like arguments, none reach it
$r = $t->request('POST',
    "/api/v1/sandboxes/$id/execute?x=1&TOKEN=a&%74oken=b&token&y=2",
    key => $alice->{key}, body => '{}');
is($r->{json}{query}, 'x=1&y=2', 'token arguments of any spelling stripped');

###############################################################################
# no key in any log, whatever the variable

$t->stop();

my $logs = join '', map { $t->read_file($_) // '' }
    qw/ error.log access.log all.log stderr.log /;
my $all = $t->read_file('all.log');

for my $k ($alice, $admin) {
    ok(index($logs, $k->{secret}) < 0, "no secret of $k->{id} in any log");
}
like($all, qr/\?a=1&TOKEN=REDACTED&b=2 HTTP/, 'the request line redacted');
like($all, qr/"a=1&TOK%45N=REDACTED&b=2"/, 'the arguments too');
like($all, qr!"GET /api/v1/user#x\?TOKEN=REDACTED HTTP/1.1"!,
    'a key after a fragment redacted as well');

$t->finish();
