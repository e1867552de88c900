#!/usr/bin/perl

# "llmsafespace_postgres" is checked by nginx -t: a bad connection string
# or parameter fails with a message naming the directive and the problem,
# and never echoes a password.  Host names are resolved when the
# configuration is read (no DNS in workers): "localhost" works.

use warnings;
use strict;

use Test::More;

use LSS::Test;

my $t = LSS::Test->new(workers => 1);

sub conf {
    my ($directive) = @_;
    return <<"EOF";
%%TEST_GLOBALS%%
events { }
http {
    %%TEST_GLOBALS_HTTP%%
    $directive
    server {
        listen 127.0.0.1:%%PORT_8080%%;
        location = /healthz { llmsafespace_health; }
    }
}
EOF
}

sub check {
    my ($directive) = @_;
    return $t->nginx_test(conf($directive));
}

my ($rc, $out);

($rc, $out) = check('llmsafespace_postgres "host=127.0.0.1 port=5 '
    . 'dbname=x user=y" connections=3 connect_timeout=500ms timeout=2s '
    . 'queue=10 backoff=10ms:1s;');
is($rc, 0, 'a valid directive passes nginx -t') or diag($out);

($rc, $out) = check('llmsafespace_postgres "host=127.0.0.1 nosuchoption=1";');
isnt($rc, 0, 'an unknown connection option fails');
like($out, qr/"llmsafespace_postgres" has an invalid connection string: .*nosuchoption/,
    'naming the directive and the option');

($rc, $out) = check(q{llmsafespace_postgres "host=127.0.0.1 password='hunter2";});
isnt($rc, 0, 'an unterminated quote fails');
like($out, qr/"llmsafespace_postgres" has an invalid connection string: .*unterminated/,
    'and says so');
unlike($out, qr/hunter2/, 'without showing the password');

($rc, $out) = check('llmsafespace_postgres "host=127.0.0.1 password hunter2";');
isnt($rc, 0, 'a missing "=" fails');
unlike($out, qr/hunter2/, 'without showing what may be the password');

($rc, $out) = check('llmsafespace_postgres "postgresql://u:hunter2@127.0.0.1:5/db?bogus=1";');
isnt($rc, 0, 'a bad URI fails');
unlike($out, qr/hunter2/, 'without showing its password');

($rc, $out) = check('llmsafespace_postgres "host=127.0.0.1" connections=0;');
isnt($rc, 0, 'connections=0 fails');
like($out, qr/"llmsafespace_postgres" has an invalid parameter "connections=0"/,
    'naming the parameter');

($rc, $out) = check('llmsafespace_postgres "host=127.0.0.1" timeout=soon;');
like($out, qr/invalid parameter "timeout=soon"/, 'a bad time fails');

($rc, $out) = check('llmsafespace_postgres "host=127.0.0.1" backoff=1s:10ms;');
like($out, qr/invalid parameter "backoff=1s:10ms"/,
    'a backoff whose max is below its min fails');

($rc, $out) = check('llmsafespace_postgres "host=127.0.0.1" color=blue;');
like($out, qr/invalid parameter "color=blue"/, 'an unknown parameter fails');

($rc, $out) = check('llmsafespace_postgres "host=no-such-host.invalid";');
isnt($rc, 0, 'a host that does not resolve fails');
like($out, qr/cannot resolve host "no-such-host.invalid"/, 'and says so');

($rc, $out) = check('llmsafespace_postgres "host=a,b port=1,2,3";');
isnt($rc, 0, 'a port list longer than the host list fails');

# "localhost" is resolved at start and the worker connects through it

$t->pg_start();

my $port = $t->pg_port();
my $d = qq{llmsafespace_postgres "host=localhost port=$port }
    . qq{dbname=llmsafespace user=postgres application_name='it\\\\'s me'" }
    . qq{backoff=50ms:300ms;};

($rc, $out) = check($d);
is($rc, 0, 'host=localhost passes') or diag($out);

$t->run(conf($d));

my $r = $t->wait_for(sub {
    my $r = $t->get('/healthz');
    $r->{json} && $r->{json}{postgres}{up} && $r }, 10);
ok($r, 'a worker connects to "localhost"');

# the options survive the rewrite, quotes included (libpq: 'it\'s me',
# written \\' in nginx's double-quoted string)

my ($n) = $t->dbh()->selectrow_array(
    q{SELECT count(*) FROM pg_stat_activity WHERE application_name = 'it''s me'});
cmp_ok($n, '>=', 1, 'connection options are kept');

$t->finish();
