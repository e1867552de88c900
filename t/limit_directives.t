#!/usr/bin/perl

# Directive checks of the Redis client and the rate limiter that
# t/directives.t does not cover: valid forms that must pass (a zone used
# before it is defined, rates per minute) and bad values that must fail
# "nginx -t" with a message naming the directive and the value.

use warnings;
use strict;

use Test::More;

use LSS::Test;

my $t = LSS::Test->new(workers => 1);

$t->write_keys_file('keys', {});

sub conf {
    my (%p) = @_;

    my $redis = $p{redis} // 'llmsafespace_redis 127.0.0.1:6379;';
    my $zones = $p{zones}
        // 'llmsafespace_limit_zone zone=api:1m rate=10r/s burst=5;';
    my $limits = $p{limits} // 'llmsafespace_limit default zone=api;';
    my $http = $p{http} // '';

    return <<"EOF";
%%TEST_GLOBALS%%
events { }
http {
    %%TEST_GLOBALS_HTTP%%
    llmsafespace_keys_file %%TESTDIR%%/keys;
    $redis
    $http
    $zones

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        location /api/v1/ {
            llmsafespace_api;
            $limits
        }
    }
}
EOF
}

my ($rc, $out) = $t->nginx_test(conf());
is($rc, 0, 'base configuration passes') or diag($out);

# valid forms

($rc, $out) = $t->nginx_test(conf(
    http => 'llmsafespace_limit create zone=later;',
    zones => "llmsafespace_limit_zone zone=api:1m rate=10r/s;\n"
        . "    llmsafespace_limit_zone zone=later:64k rate=30r/m;"));
is($rc, 0, 'a zone used before its definition passes') or diag($out);

($rc, $out) = $t->nginx_test(conf(
    redis => 'llmsafespace_redis unix:/run/redis/redis.sock db=15 '
        . 'queue=1 backoff=10ms:10ms;'));
is($rc, 0, 'unix socket, db 15, queue 1, fixed backoff pass') or diag($out);

($rc, $out) = $t->nginx_test(conf(
    limits => "llmsafespace_limit default zone=api;\n"
        . "            llmsafespace_limit create zone=api;\n"
        . "            llmsafespace_limit execute zone=api;"));
is($rc, 0, 'one zone for all three classes passes') or diag($out);

# bad values: [directive, configuration, what the message must name]

my @bad = (
    [ 'llmsafespace_redis', 'queue=0',
      { redis => 'llmsafespace_redis 127.0.0.1:6379 queue=0;' },
      qr/invalid "queue" value "0"/ ],
    [ 'llmsafespace_redis', 'backoff without a maximum',
      { redis => 'llmsafespace_redis 127.0.0.1:6379 backoff=100ms;' },
      qr/invalid "backoff" value "100ms"/ ],
    [ 'llmsafespace_redis', 'db out of range',
      { redis => 'llmsafespace_redis 127.0.0.1:6379 db=70000;' },
      qr/invalid "db" value "70000"/ ],
    [ 'llmsafespace_redis', 'parameter without a value',
      { redis => 'llmsafespace_redis 127.0.0.1:6379 fast;' },
      qr/invalid parameter "fast"/ ],
    [ 'llmsafespace_redis', 'bad address',
      { redis => 'llmsafespace_redis 127.0.0.1:6379/db;' },
      qr/invalid address|127\.0\.0\.1:6379\/db/ ],
    [ 'llmsafespace_redis', 'the password is never echoed',
      { redis => 'llmsafespace_redis 127.0.0.1:6379 password=;' },
      qr/empty "password" value/ ],
    [ 'llmsafespace_limit_zone', 'zone too small',
      { zones => 'llmsafespace_limit_zone zone=api:4k rate=1r/s;' },
      qr/zone "api" is too small/ ],
    [ 'llmsafespace_limit_zone', 'zone without a size',
      { zones => 'llmsafespace_limit_zone zone=api rate=1r/s;' },
      qr/invalid zone "zone=api"/ ],
    [ 'llmsafespace_limit_zone', 'rate without a unit',
      { zones => 'llmsafespace_limit_zone zone=api:1m rate=10;' },
      qr/invalid rate "rate=10"/ ],
    [ 'llmsafespace_limit_zone', 'unknown parameter',
      { zones => 'llmsafespace_limit_zone zone=api:1m rate=1r/s '
          . 'nodelay;' },
      qr/invalid parameter "nodelay"/ ],
    [ 'llmsafespace_limit', 'same class twice at one level',
      { limits => "llmsafespace_limit default zone=api;\n"
          . "            llmsafespace_limit default zone=api;" },
      qr/class "default" is limited twice/ ],
    [ 'llmsafespace_limit', 'parameter is not zone=',
      { limits => 'llmsafespace_limit default api;' },
      qr/invalid parameter "api"/ ],
    [ 'llmsafespace_limit_zone', 'name taken by another kind of zone',
      { http => 'llmsafespace_key_cache zone=api:1m;' },
      qr/"api"/ ],
);

for my $case (@bad) {
    my ($directive, $name, $p, $re) = @$case;

    ($rc, $out) = $t->nginx_test(conf(%$p));

    isnt($rc, 0, "$directive: $name: nginx -t fails");
    ok($out =~ /\[emerg\]/ && $out =~ $re
        && ($out =~ /\Q$directive\E/ || $name =~ /another kind/),
        "$directive: $name: message names it") or diag($out);
}

# an undefined zone fails too, whatever the message's wording

($rc, $out) = $t->nginx_test(conf(limits =>
    'llmsafespace_limit default zone=nosuch;'));
isnt($rc, 0, 'an undefined zone fails nginx -t');
like($out, qr/"nosuch"/, 'the message names the zone');

$t->finish();
