#!/usr/bin/perl

# Errors under /api/v1 are JSON bodies {"error":{"code","message",
# "details"}} with the api.md codes, never nginx's HTML pages: routing
# errors from the module, and the errors nginx itself raises (body too
# large, header too large, URI too long).  Outside the API nginx keeps its
# own pages.

use warnings;
use strict;

use Test::More;

use LSS::Test;

my $t = LSS::Test->new(workers => 2);

my ($admin, $user) = $t->write_keys_file('keys',
    { role => 'admin', user_id => 'usr-admin', user_name => 'root' },
    { role => 'user', user_id => 'usr-alice', user_name => 'alice' });

$t->run(<<'EOF');
%%TEST_GLOBALS%%
events { }
http {
    %%TEST_GLOBALS_HTTP%%
    llmsafespace_keys_file %%TESTDIR%%/keys;

    large_client_header_buffers 2 1k;

    limit_req_zone $binary_remote_addr zone=perip:1m rate=1r/m;
    limit_req_status 429;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        # errors raised before a location is chosen use the server's conf
        llmsafespace_json_errors on;

        location /api/v1/ {
            llmsafespace_api;
            client_max_body_size 1k;
        }

        location /api/v1/limited/ {
            llmsafespace_api;
            limit_req zone=perip;
        }
    }

    server {
        listen 127.0.0.1:%%PORT_8081%%;

        location / {
            return 404;
        }
    }
}
EOF

# the shape every API error must have

sub is_api_error {
    my ($r, $status, $code, $name) = @_;

    subtest $name => sub {
        is($r->{status}, $status, 'status');
        like($r->{headers}{'content-type'} // '', qr!^application/json!,
            'JSON content type');
        unlike($r->{body}, qr/<html|<center>|nginx/i, 'not an HTML page');
        ok(ref $r->{json} eq 'HASH', 'body is JSON') or diag($r->{body});

        my $e = $r->{json} && $r->{json}{error};
        ok(ref $e eq 'HASH', 'error object');
        is($e && $e->{code}, $code, "code $code") if defined $code;
        ok($e && defined $e->{message} && length $e->{message},
            'message present');
        ok($e && ref $e->{details} eq 'HASH', 'details object');
    };
}

my $r;

# authentication comes first

$r = $t->get('/api/v1/user');
is_api_error($r, 401, 'unauthorized', 'no key: 401');

$r = $t->get('/api/v1/user', key => 'lsp_notakey');
is_api_error($r, 401, 'unauthorized', 'malformed key: 401');
unlike($r->{body}, qr/lsp_notakey/, 'the key is not echoed');

$r = $t->get('/api/v1/user', key => $user->{key} . 'x');
is_api_error($r, 401, 'unauthorized', 'wrong secret: 401');

# routing

$r = $t->get('/api/v1/no-such-route', key => $user->{key});
is_api_error($r, 404, 'not_found', 'unknown route: 404');

$r = $t->get('/api/v1/user/apikeys/x/y/z/w', key => $user->{key});
is_api_error($r, 404, 'not_found', 'too many segments: 404');

$r = $t->request('PUT', '/api/v1/user', key => $user->{key},
    json => {});
is_api_error($r, 405, 'method_not_allowed', 'wrong method: 405');
like($r->{headers}{allow} // '', qr/GET/, 'Allow header lists GET');

$r = $t->request('PATCH', '/api/v1/users', key => $admin->{key},
    json => {});
is_api_error($r, 405, 'method_not_allowed', 'wrong method on /users: 405');

# bodies

$r = $t->request('POST', '/api/v1/users', key => $admin->{key},
    headers => { 'Content-Type' => 'application/json' },
    body => '{"name": "bob", ');
is_api_error($r, 400, 'bad_request', 'malformed JSON: 400');
like($r->{json}{error}{message} // '', qr/json|expected|end of|line|column/i,
    'the message names the JSON problem');

$r = $t->request('POST', '/api/v1/users', key => $admin->{key},
    headers => { 'Content-Type' => 'application/json' },
    body => '[1, 2, 3]');
is_api_error($r, 400, 'bad_request', 'JSON that is not an object: 400');

$r = $t->request('POST', '/api/v1/users', key => $admin->{key},
    headers => { 'Content-Type' => 'application/json' },
    body => '{"name": "' . ('x' x 4096) . '"}');
is_api_error($r, 413, 'payload_too_large',
    'body over client_max_body_size: 413');

$r = $t->request('POST', '/api/v1/users', key => $admin->{key},
    headers => { 'Content-Type' => 'application/json',
        'Transfer-Encoding' => 'chunked', 'Content-Length' => undef },
    body => sprintf("%x\r\n%s\r\n0\r\n\r\n", 2048, 'y' x 2048));
is_api_error($r, 413, 'payload_too_large', 'chunked body over the limit: 413');

# nginx's own errors

$r = $t->get('/api/v1/user', key => $user->{key},
    headers => { Cookie => 'c=' . ('z' x 3000) });
is_api_error($r, 400, undef, 'header too large: 400');
like($r->{json}{error}{code} // '', qr/^(bad_request|headers_too_large)$/,
    'header too large: code');

$r = $t->get('/api/v1/user?q=' . ('q' x 3000), key => $user->{key});
ok($r->{status} == 414 || $r->{status} == 400, 'request line too long')
    or diag($r->{status});
is_api_error($r, $r->{status}, undef, 'request line too long: JSON');

$r = parse($t->http("GET /api/v1/user HTTP/1.1\r\nHost: localhost\r\n"
    . "Connection: close\r\nContent-Length: abc\r\n\r\n"));
is_api_error($r, 400, 'bad_request', 'invalid Content-Length: 400');

# nginx's own limit_req: JSON too, and when to come back

$t->get('/api/v1/limited/x', key => $user->{key});
$r = $t->get('/api/v1/limited/x', key => $user->{key});
is_api_error($r, 429, 'rate_limited', 'limit_req refusal');
is($r->{headers}{'retry-after'}, '1', 'with Retry-After');

# outside the API nginx keeps its HTML pages

$r = $t->get('/', port => port(8081));
is($r->{status}, 404, 'plain server 404');
like($r->{body}, qr/<html/i, 'plain server keeps the HTML page');

# the server survives all of it

$r = $t->get('/api/v1/user', key => $user->{key});
isnt($r->{status}, 401, 'a valid key still authenticates');
isnt($r->{status}, 0, 'server answering');

$t->finish();

sub parse { LSS::Test::parse_response(@_) }
