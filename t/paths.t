#!/usr/bin/perl

# A path never becomes another route: nginx resolves "." and ".." (also
# percent-encoded, and around an encoded "/") before any phase, so
# "DELETE .../files/subdir/../../" would be the sandbox's own DELETE.
# Such paths, and paths that are not UTF-8 once decoded, are refused with
# a JSON 400 naming "path", on every route of a server with the API, and
# nothing reaches the router or a runner.  Names with dots that are not
# dot segments pass unchanged.

use warnings;
use strict;

use Test::More;
use JSON::XS;

use LSS::Test;
use LSS::Stack;

my $t = LSS::Test->new(workers => 1);
my $sock = $t->testdir() . '/runner.sock';
my $seen = $t->testdir() . '/seen';

$t->redis_start();
$t->pg_start();
$t->dbh()->do($t->read_file("$LSS::Test::TOP/sql/controller.sql"));

# the stand-in runner echoes and notes every request it gets
ok($t->stand_in_runner($sock, sub {
    my ($app) = @_;

    $app->routes->any('/*rest' => sub {
        my $c = shift;
        open(my $fh, '>>', $seen) or die;
        print $fh $c->req->method . ' ' . $c->req->url->path->to_string
            . "\n";
        close($fh);
        $c->render(json => { path => $c->req->url->path->to_string });
    });
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
    server {
        listen 127.0.0.1:%%PORT_8080%%;
        llmsafespace_json_errors on;
        location /api/v1/ {
            llmsafespace_api;
        }
        location / {
            return 200 "elsewhere\\n";
        }
        ${\ $t->runner_location() }
    }
    server {
        listen 127.0.0.1:%%PORT_8081%%;
        location / {
            return 200 "\$uri\\n";
        }
    }
}
EOF

my $alice_id = $t->create_user(name => 'alice', role => 'admin');
my $alice = $t->create_key($alice_id)->{key};

# the workers connect to PostgreSQL once started (slowly under valgrind)
ok($t->wait_for(sub {
    $t->get('/api/v1/user', key => $alice)->{status} == 200 }, 10),
   'the gateway looks keys up');

my $id = 'sb-path00000000000001';

$t->redis()->hset("lss:sb:$id", owner => $alice_id, runner => "unix:$sock",
    token => 'ab' x 32, expires => (time() + 3600) * 1000,
    runtime => 'python', pool => '', phase => 'Running');
$t->dbh()->do(q{INSERT INTO sandboxes (id, owner, runtime, phase) }
              . q{VALUES (?, ?, 'python', 'Running')}, undef,
              $id, $alice_id);

sub seen {
    my $s = -f $seen ? $t->read_file($seen) : '';
    unlink($seen);
    return $s;
}

# the request line as sent: no client library normalises it first
sub raw {
    my ($method, $path) = @_;
    my $res = $t->http("$method $path HTTP/1.1\r\nHost: localhost\r\n"
                       . "Authorization: Bearer $alice\r\n"
                       . "Connection: close\r\nContent-Length: 0\r\n\r\n");
    my ($status) = $res =~ m!^HTTP/1\.1 (\d+)!;
    my ($body) = $res =~ /\r\n\r\n(.*)\z/s;
    return ($status // 0, scalar(eval { decode_json($body // '') }), $res);
}

my $files = "/api/v1/sandboxes/$id/files";

for my $case (
    [ 'DELETE', "$files/subdir/../../" ],
    [ 'DELETE', "$files/subdir/../.." ],
    [ 'GET', "$files/.." ],
    [ 'GET', "$files/../status" ],
    [ 'GET', "$files/a/./b" ],
    [ 'GET', "$files/." ],
    [ 'DELETE', "$files/subdir/%2e%2e/%2E%2E/" ],
    [ 'DELETE', "$files/subdir/.%2e/%2e./" ],
    [ 'DELETE', "$files/subdir%2f..%2f..%2f" ],
    [ 'DELETE', "$files/subdir%2F%2E%2E%2F%2E%2E" ],
    [ 'DELETE', "$files/subdir/..%5c..%5c" ],
    [ 'DELETE', "$files/subdir\\..\\.." ],
    [ 'PUT', "$files/a/%2e/b" ],
    [ 'POST', "$files/x/../../execute" ],
    [ 'GET', "/api/v1/sandboxes/$id/stream/.." ],
    [ 'POST', "/api/v1/sandboxes/$id/execute/../../$id" ],
    [ 'GET', "/api/v1/users/../user" ],
    [ 'GET', "/api/v1/./user" ],
    [ 'GET', "/other/../api/v1/user" ],
    [ 'GET', "/api/v1/sandboxes/x/../../../../healthz" ],
    [ 'GET', "$files/%C0%AE%C0%AE/" ],
)
{
    my ($method, $path) = @$case;
    my ($st, $b, $res) = raw($method, $path);
    is($st, 400, "$method $path: 400");
    is($b->{error}{code}, 'bad_request', '  bad_request')
        or diag($res);
    is($b->{error}{details}{field}, 'path', '  naming the path');
}

is(seen(), '', 'none of them reached the runner');

my ($deleted) = $t->dbh()->selectrow_array(
    'SELECT delete_requested_at FROM sandboxes WHERE id = ?', undef, $id);
is($deleted, undef, 'the sandbox was not deleted');

# not UTF-8 once decoded: overlong, surrogate, cut short, NUL

for my $path ("$files/%C0%AE", "$files/%ED%A0%80", "$files/a%E2%82",
              "/api/v1/sandboxes/%C0%AE/execute")
{
    my ($st, $b, $res) = raw('GET', $path);
    is($st, 400, "$path: 400");
    is($b->{error}{details}{field}, 'path', '  JSON naming the path')
        or diag($res);
}

my ($nst, $nb) = raw('GET', "$files/a%00b");
is($nst, 400, 'NUL: nginx refuses it itself');
is($nb->{error}{code}, 'bad_request', '  as JSON (llmsafespace_json_errors)');

# names with dots that are no dot segments go through unchanged

for my $name ('...', '..a', 'a..', '.hidden', '%2e%2e%2e', 'a.%2e',
              '%E2%82%AC.txt', '%252e%252e')
{
    my ($st, $b) = raw('GET', "$files/$name");
    is($st, 200, "$name: reaches the runner");
    ok(defined $b->{path} && $b->{path} =~ m!^/files/!
       && $b->{path} !~ m!/\.\.?(?:/|$)!, "  as a file name ($b->{path})");
}

my ($st, $b) = raw('GET', "$files?path=sub");
is($st, 200, 'a listing with a query');

($st, $b) = raw('GET', "/api/v1/user?next=/../x");
is($st, 200, 'dots in the query string are not the path');

# a server without the API keeps nginx's own handling

my $res = $t->http("GET /a/../b HTTP/1.1\r\nHost: localhost\r\n"
                   . "Connection: close\r\n\r\n", port => LSS::Test::port(8081));
like($res, qr!^HTTP/1\.1 200.*\r\n\r\n/b\n!s,
     'other servers: nginx resolves dot segments as ever');

$t->finish();
