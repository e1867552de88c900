#!/usr/bin/perl

# The minimal install: API keys from a keys file, no PostgreSQL.  Keys are
# checked against their hashes; roles apply; the routes that need the
# database say so; a malformed file fails "nginx -t" naming the line.

use warnings;
use strict;

use Test::More;

use LSS::Test;

my $t = LSS::Test->new(workers => 2);

my ($admin, $user) = $t->write_keys_file('keys',
    { role => 'admin', user_id => 'usr-admin', user_name => 'root' },
    { role => 'user', user_id => 'usr-alice', user_name => 'alice' });

my $conf = <<'EOF';
%%TEST_GLOBALS%%
events { }
http {
    %%TEST_GLOBALS_HTTP%%
    llmsafespace_keys_file %%TESTDIR%%/%%KEYS%%;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        location /api/v1/ {
            llmsafespace_api;
        }

        # "return" runs at the rewrite phase, before access: the protected
        # location hands the request to a backend instead
        location /private/ {
            llmsafespace_auth on;
            proxy_set_header X-User $llmsafespace_user;
            proxy_pass http://127.0.0.1:%%PORT_8081%%;
        }

        location /public/ {
            return 200 "public\n";
        }
    }

    server {
        listen 127.0.0.1:%%PORT_8081%%;

        location / {
            return 200 "hello $http_x_user\n";
        }
    }
}
EOF

# malformed files are refused at configuration time, naming the line

for my $bad ("short:line\n",
             "$admin->{id}:nothex:u:n:admin\n",
             "$admin->{id}:$admin->{hash}:u:n:root\n")
{
    $t->write_file('bad-keys', "# comment\n\n$bad");
    my ($rc, $out) = $t->nginx_test($conf =~ s/%%KEYS%%/bad-keys/r);
    isnt($rc, 0, 'malformed keys file refused');
    like($out, qr/llmsafespace_keys_file: invalid entry .* line 3/,
        'the message names the directive and the line');
}

my ($rc, $out) = $t->nginx_test($conf =~ s/%%KEYS%%/missing/r);
like($out, qr/llmsafespace_keys_file: cannot open/, 'missing keys file');

$t->run($conf =~ s/%%KEYS%%/keys/r);

my $r = $t->get('/api/v1/user', key => $admin->{key});
is($r->{status}, 200, 'admin key from the file');
is_deeply($r->{json}, { id => 'usr-admin', name => 'root', role => 'admin',
    keyId => $admin->{id} }, 'identity from the file');

$r = $t->get('/api/v1/user', key => $user->{key});
is($r->{json}{role}, 'user', 'user key from the file');

is($t->get('/api/v1/user',
        key => "lsp_$user->{id}_" . ('A' x 32))->{status},
    401, 'wrong secret refused');
is($t->get('/api/v1/users', key => $user->{key})->{status}, 403,
    'roles apply');

$r = $t->get('/api/v1/users', key => $admin->{key});
is($r->{status}, 501, 'user management needs PostgreSQL');
is($r->{json}{error}{code}, 'not_implemented', '... and says so');

# llmsafespace_auth protects any location, refusals in JSON

$r = $t->get('/private/x');
is($r->{status}, 401, 'auth on a plain location');
like($r->{headers}{'content-type'}, qr!application/json!, 'JSON refusal');
is($t->get('/private/x', key => $user->{key})->{body}, "hello alice\n",
    'identity variables after auth');
is($t->get('/public/x')->{status}, 200, 'auth off elsewhere');

$t->finish();
