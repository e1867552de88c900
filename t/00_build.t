#!/usr/bin/perl

# The module is built for, and loads into, Debian's stock nginx 1.22.1.

use warnings;
use strict;

use Test::More;

use LSS::Test;

my $t = LSS::Test->new(workers => 1);

ok(-f $LSS::Test::MODULE, 'module built') or BAIL_OUT('no module');

my $v = `$LSS::Test::NGINX -V 2>&1`;
like($v, qr!nginx version: nginx/1\.22\.1\b!, 'stock nginx is 1.22.1');
like($v, qr/--with-compat/, 'stock nginx built --with-compat');

my $conf = <<'EOF';
%%TEST_GLOBALS%%
events { }
http {
    %%TEST_GLOBALS_HTTP%%
    server {
        listen 127.0.0.1:%%PORT_8080%%;
        location / { return 200 "ok\n"; }
    }
}
EOF

my ($rc, $out) = $t->nginx_test($conf);
is($rc, 0, 'nginx -t accepts a configuration loading the module')
    or diag($out);
like($out, qr/test is successful/, 'nginx -t says successful');
unlike($out, qr/not binary compatible|version \d+ instead of/,
    'no version or signature mismatch');

$t->run($conf);

my $r = $t->get('/');
is($r->{status}, 200, 'nginx with the module serves a request');
is($r->{body}, "ok\n", 'body served');
ok(scalar($t->worker_pids()) >= 1, 'worker running');

$t->finish();
