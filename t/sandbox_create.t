#!/usr/bin/perl

# Sandbox creates the gateway refuses before anything is recorded: egress
# to an address in a private or special range (unless
# llmsafespace_egress_allow lets it through; the "never" ranges stay
# refused whatever is allowed), and a request lowering its profile's
# security level.  What passes is recorded as asked (no controller here:
# the create answers 202 Pending).

use warnings;
use strict;

use Test::More;
use JSON::XS;

use LSS::Test;
use LSS::Stack;

my $t = LSS::Test->new(workers => 1);

$t->redis_start();
$t->pg_start();
$t->dbh()->do($t->read_file("$LSS::Test::TOP/sql/controller.sql"));

$t->run(<<"EOF");
%%TEST_GLOBALS%%
events { }
http {
    %%TEST_GLOBALS_HTTP%%
    llmsafespace_redis %%REDIS%%;
    llmsafespace_postgres "%%PG%%";
    llmsafespace_key_cache zone=keys:1m;
    ${\ $t->sandbox_conf(quota => 1000) }
    llmsafespace_egress_allow 10.20.0.0/16 192.0.2.128/25;
    llmsafespace_egress_allow 169.254.0.0/16;
    server {
        listen 127.0.0.1:%%PORT_8080%%;
        location /api/v1/ {
            llmsafespace_api;
        }
    }
}
EOF

my $key = $t->create_key($t->create_user(name => 'alice'))->{key};

# the workers connect to PostgreSQL once started (slowly under valgrind)
ok($t->wait_for(sub {
    $t->get('/api/v1/user', key => $key)->{status} == 200 }, 10),
   'the gateway looks keys up');

sub create {
    my ($body) = @_;
    my $r = $t->request('POST', '/api/v1/sandboxes', key => $key,
                        json => { runtime => 'python', %$body });
    return ($r->{status}, eval { decode_json($r->{body}) } // {});
}

sub records {
    return $t->dbh()->selectrow_array('SELECT count(*) FROM sandboxes');
}

sub egress {
    my ($domain) = @_;
    return create({ networkAccess => { egress => [{ domain => $domain }] },
                    useWarmPool => JSON::XS::false });
}

# addresses in every spelling the controller's resolver takes

for my $case (
    [ '10.1.2.3', 'private network 10.0.0.0/8' ],
    [ '172.20.0.1', 'private network 172.16.0.0/12' ],
    [ '192.168.1.10', 'private network 192.168.0.0/16' ],
    [ '100.64.0.1', 'shared address space (CGNAT) 100.64.0.0/10' ],
    [ '192.0.2.7', 'TEST-NET-1' ],
    [ '198.51.100.7', 'TEST-NET-2' ],
    [ '203.0.113.7', 'TEST-NET-3' ],
    [ '198.19.255.1', 'benchmarking 198.18.0.0/15' ],
    [ '192.0.0.9', 'IETF protocol assignments' ],
    [ '0.0.0.0', '"this network" 0.0.0.0/8' ],
    [ '127.0.0.1', 'loopback' ],
    [ '224.0.0.251', 'multicast' ],
    [ '240.0.0.1', 'reserved' ],
    [ '255.255.255.255', 'reserved (and broadcast)' ],
    [ '100.100.100.200', 'cloud metadata' ],
    [ '167772161', 'private network 10.0.0.0/8' ],       # 10.0.0.1
    [ '0xc0a80001', 'private network 192.168.0.0/16' ],  # 192.168.0.1
    [ '012.1.1.1', 'private network 10.0.0.0/8' ],       # octal 10
    [ '10.1', 'private network 10.0.0.0/8' ],
    [ '10.0.0.0/8', 'private network 10.0.0.0/8' ],
    [ '8.0.0.0/6', 'private network 10.0.0.0/8' ],       # holds 10/8
    [ '10.20.0.0/15', 'private network 10.0.0.0/8' ],    # wider than allowed
)
{
    my ($domain, $why) = @$case;
    my $before = records();
    my ($st, $b) = egress($domain);
    is($st, 422, "egress to $domain: 422");
    is($b->{error}{details}{field}, 'networkAccess', '  naming the field');
    like($b->{error}{message} // '', qr/\Q$domain\E.*\Q$why\E/,
         "  and the range ($why)");
    is(records(), $before, '  nothing recorded');
}

# the operator's ranges, and what they cannot open

for my $domain ('10.20.3.4', '192.0.2.200') {
    my ($st, $b) = egress($domain);
    isnt($st, 422, "egress to $domain, allowed by the operator")
        or diag(explain $b);
}

my ($st, $b) = egress('10.20.0.0/24');
is($st, 422, 'an allowed range is still no rule (one host each)');
like($b->{error}{message}, qr/not a range/, '  said so');

($st, $b) = egress('192.0.2.100');
like($b->{error}{message} // '', qr/TEST-NET-1.*not allowed by/,
     'beside an allowed range: refused');

($st, $b) = egress('169.254.169.254');
is($st, 422, 'link-local stays refused though allowed');
like($b->{error}{message}, qr/link-local/, '  named');

($st, $b) = egress('8.8.8.8');
is($st, 202, 'a public address passes (the controller resolves names)');
($st, $b) = egress('example.com');
is($st, 202, 'a name passes');

# a profile's security level is the floor

($st, $b) = create({ profileRef => 'high-isolation',
                     securityLevel => 'standard' });
is($st, 422, 'a high profile lowered to standard: 422');
is($b->{error}{details}{field}, 'securityLevel', '  naming the field');
like($b->{error}{message}, qr/high-isolation.*may not lower/, '  and why');

($st, $b) = create({ profileRef => 'high-isolation' });
is($st, 202, 'the profile alone');
is($b->{securityLevel}, 'high', '  runs at its level');

($st, $b) = create({ profileRef => 'high-isolation',
                     securityLevel => 'custom' });
is($b->{securityLevel}, 'high', '"custom" is the profile\'s level');

($st, $b) = create({ profileRef => 'high-isolation',
                     securityLevel => 'high' });
is($b->{securityLevel}, 'high', 'the same level again');

($st, $b) = create({ profileRef => 'default', securityLevel => 'high' });
is($st, 202, 'a standard profile raised to high');
is($b->{securityLevel}, 'high', '  runs high');

is($t->dbh()->selectrow_array(q{SELECT count(*) FROM sandboxes }
        . q{WHERE security_level = 'standard' AND network_access::text }
        . q{NOT LIKE '%"domain"%'}), 0,
   'no create ran below its profile');

$t->finish();
