#!/usr/bin/perl

# The catalog: llmsafespace_runtimes and llmsafespace_profiles are read and
# checked at configuration time (a broken file stops nginx -t, a reload
# with one keeps the old catalog), and GET /runtimes, /profiles serve them
# with the runtimes' private fields left out.  Any role may read them.

use warnings;
use strict;

use Test::More;

use LSS::Test;

my $TOP = $LSS::Test::TOP;

my $t = LSS::Test->new(workers => 2);

my ($admin, $user) = $t->write_keys_file('keys',
    { role => 'admin' }, { role => 'user' });

sub conf {
    my ($directives) = @_;
    return <<"EOF";
%%TEST_GLOBALS%%
events { }
http {
    %%TEST_GLOBALS_HTTP%%
    llmsafespace_keys_file %%TESTDIR%%/keys;
    $directives

    server {
        listen 127.0.0.1:%%PORT_8080%%;
        location /api/v1/ { llmsafespace_api; }
    }
}
EOF
}

sub api {
    my ($path, $key, %o) = @_;
    return $t->request($o{method} // 'GET', "/api/v1$path",
        key => $key // $user->{key}, %o);
}

sub is_error {
    my ($r, $status, $code, $name) = @_;
    subtest $name => sub {
        is($r->{status}, $status, 'status');
        is($r->{json} && $r->{json}{error}{code}, $code, 'code');
        ok($r->{json} && length $r->{json}{error}{message}, 'message');
    };
}

###############################################################################
# configuration checks

sub nginx_t {
    my ($runtimes, $profiles) = @_;
    my $d = '';
    $d .= "llmsafespace_runtimes $runtimes;\n" if defined $runtimes;
    $d .= "llmsafespace_profiles $profiles;\n" if defined $profiles;
    return $t->nginx_test(conf($d));
}

my ($rc, $out) = nginx_t("$TOP/runtimes/index.json",
    "$TOP/conf/profiles.json");
is($rc, 0, 'the shipped runtimes and profiles pass nginx -t') or diag($out);

my @bad = (
    [ runtimes => 'missing.json', undef, qr/cannot load .*missing\.json/ ],
    [ runtimes => 'r.json', "{\"runtimes\": [\n{\"name\": \"a\",}]}",
      qr/cannot load .*line 2/ ],
    [ runtimes => 'r.json', '[{"name": "a"}]',
      qr/not an object with a "runtimes" array/ ],
    [ runtimes => 'r.json', '{"runtimes": [{"version": "1"}]}',
      qr/runtime #1 has no string "name"/ ],
    [ runtimes => 'r.json', '{"runtimes": [{"name": "a"}, "b"]}',
      qr/runtime #2 is not an object/ ],
    [ runtimes => 'r.json', '{"runtimes": [{"name": "a b"}]}',
      qr/runtime #1 has a "name" that is not/ ],
    [ runtimes => 'r.json', '{"runtimes": [{"name": "a"}, {"name": "a"}]}',
      qr/runtime #2 repeats the name/ ],
    [ runtimes => 'r.json', '{"runtimes": [{"name": "a", "name": "b"}]}',
      qr/cannot load .*duplicate/ ],
    [ profiles => 'p.json', '{"profile": []}',
      qr/neither an array nor an object with a "profiles" array|is not an/ ],
    [ profiles => 'p.json', '[{"name": "x", "securityLevel": "low"}]',
      qr/profile #1 has a "securityLevel" other than/ ],
    [ profiles => 'p.json', '[{"name": "x", "networkAccess": []}]',
      qr/profile #1 has a "networkAccess" that is not an object/ ],
    [ profiles => 'p.json',
      '[{"name": "x", "networkAccess": {"ingress": "no"}}]',
      qr/"networkAccess.ingress" that is not a boolean/ ],
);

for my $b (@bad) {
    my ($what, $file, $content, $re) = @$b;
    unlink "$t->{testdir}/$file";
    $t->write_file($file, $content) if defined $content;

    my ($rc, $out) = $what eq 'runtimes'
        ? nginx_t("%%TESTDIR%%/$file", undef)
        : nginx_t(undef, "%%TESTDIR%%/$file");

    (my $label = $content // 'a missing file') =~ s/\s+/ /g;
    isnt($rc, 0, "nginx -t refuses $what: $label");
    like($out, qr/\[emerg\].*llmsafespace_$what/, '  with an emerg');
    like($out, $re, '  saying why');
}

($rc, $out) = $t->nginx_test(conf(
    "llmsafespace_runtimes $TOP/runtimes/index.json;\n"
    . "llmsafespace_runtimes $TOP/runtimes/index.json;\n"));
like($out, qr/"llmsafespace_runtimes" directive is duplicate/,
    'a second llmsafespace_runtimes is refused');

# a relative path is relative to the configuration prefix, as for nginx's
# own file directives

$t->write_file('rel/profiles.json', '[{"name": "rel"}]');
($rc, $out) = nginx_t(undef, 'rel/profiles.json');
is($rc, 0, 'a relative path is found under the prefix') or diag($out);

###############################################################################
# no catalog configured: empty lists

$t->run(conf(''));

my $r = api('/runtimes');
is($r->{status}, 200, 'no runtimes file: GET /runtimes is 200');
is_deeply($r->{json}, { runtimes => [] }, '  with an empty list');
is_deeply(api('/profiles')->{json}, { profiles => [] },
    'no profiles file: an empty list of profiles');
is_error(api('/runtimes/python'), 404, 'not_found',
    'no runtimes file: every runtime is unknown');

# warm pools live in PostgreSQL, which this gateway does not have

is_error(api('/warmpools', $admin->{key}), 501, 'not_implemented',
    'warm pools without llmsafespace_postgres: 501');

###############################################################################
# the shipped catalog

$t->write_file('runtimes.json', $t->read_file("$TOP/runtimes/index.json"));
$t->write_file('profiles.json', $t->read_file("$TOP/conf/profiles.json"));

$t->stop();
$t->run(conf("llmsafespace_runtimes %%TESTDIR%%/runtimes.json;\n"
    . "llmsafespace_profiles %%TESTDIR%%/profiles.json;\n"));

my $index = JSON::XS->new->decode($t->read_file('runtimes.json'));

$r = api('/runtimes');
is($r->{status}, 200, 'GET /runtimes');
like($r->{headers}{'content-type'}, qr!^application/json!, '  is JSON');

my @names = map { $_->{name} } @{$r->{json}{runtimes} // []};
is_deeply(\@names, [ map { $_->{name} } @{$index->{runtimes}} ],
    '  lists every runtime of the index, in its order');

my %public = map { $_ => 1 } qw/ name version language languages
    description image preinstalledPackages packageManagers
    securityLevels /;

for my $rt (@{$r->{json}{runtimes}}) {
    my @private = grep { !$public{$_} } sort keys %$rt;
    is_deeply(\@private, [], "  $rt->{name}: public fields only");
}

my ($py) = grep { $_->{name} eq 'python:3.11' } @{$index->{runtimes}};
my %want = map { $_ => $py->{$_} } grep { exists $py->{$_} } keys %public;
ok(exists $py->{rootfs} && exists $py->{runnerArgs},
    'the index has private fields to hide');

for my $name ('python:3.11', 'python') {
    $r = api("/runtimes/$name");
    is($r->{status}, 200, "GET /runtimes/$name");
    is_deeply($r->{json}, \%want, '  is python:3.11 with its public fields');
}

is(api('/runtimes/base')->{json}{name}, 'base:bookworm',
    'a rootfs name selects its runtime');
is(api('/runtimes/nodejs:18', $admin->{key})->{json}{name}, 'nodejs:18',
    'admins read the catalog too');

is_error(api('/runtimes/python:3.12'), 404, 'not_found',
    'another version of a runtime is not found');
is_error(api('/runtimes/ruby'), 404, 'not_found', 'an unknown runtime');
like(api('/runtimes/ruby')->{json}{error}{message}, qr/ruby/,
    '  named in the message');
is_error(api('/runtimes/py%20thon'), 404, 'not_found',
    'a name the route does not take');
is_error(api('/runtimes', undef, key => undef), 401, 'unauthorized',
    'a key is needed');
is_error(api('/runtimes', undef, method => 'POST', json => {}), 405,
    'method_not_allowed', 'the catalog is read-only');

$r = api('/profiles');
is($r->{status}, 200, 'GET /profiles');
my %profiles = map { $_->{name} => $_ } @{$r->{json}{profiles} // []};
is($profiles{default}{securityLevel}, 'standard',
    '  "default" is standard');
is($profiles{'high-isolation'}{securityLevel}, 'high',
    '  "high-isolation" is high');

for my $p (values %profiles) {
    is_deeply($p->{networkAccess}, { egress => [], ingress => JSON::XS::false },
        "  $p->{name}: no network");
    ok(length $p->{description}, "  $p->{name}: described");
}

$r = api('/profiles/high-isolation');
is($r->{status}, 200, 'GET /profiles/high-isolation');
is_deeply($r->{json}, $profiles{'high-isolation'}, '  the listed profile');
is_error(api('/profiles/lax'), 404, 'not_found', 'an unknown profile');

###############################################################################
# reloads: a new catalog is served; a broken one leaves the old in place

$t->write_file('profiles.json', '{"profiles": [{"name": "only", '
    . '"securityLevel": "high", "custom": {"x": 1}}]}');
$t->reload();

$r = $t->wait_for(sub {
    my $r = api('/profiles');
    ($r->{json}{profiles}[0]{name} // '') eq 'only' && $r }, 10);
ok($r, 'after a reload the new profiles are served');
is_deeply($r && $r->{json}{profiles},
    [ { name => 'only', securityLevel => 'high', custom => { x => 1 } } ],
    '  as written, extra fields included');
is_error(api('/profiles/default'), 404, 'not_found',
    '  and the old ones are gone');

$t->write_file('profiles.json', '[{"name": "broken"');
$t->expect_alert(qr/\[emerg\].*llmsafespace_profiles.*cannot load/);
$t->reload();

ok($t->wait_for(sub {
    $t->read_file('error.log') =~ /llmsafespace_profiles.*cannot load/ }, 10),
    'a reload with a broken file is refused');

# the refusal is logged before the master goes on with the old cycle

is(api('/profiles/only')->{status}, 200, '  and the old catalog stays');
is(scalar @{api('/runtimes')->{json}{runtimes}}, scalar @names,
    '  runtimes included');

$t->finish();
