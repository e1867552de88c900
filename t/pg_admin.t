#!/usr/bin/perl

# tools/llmsafespace-admin: "init" on an empty database applies the schema
# and prints a first admin key that the gateway accepts; run again it
# prints nothing secret; --force-new-key adds a key.  "keyfile-entry" makes
# a key and the llmsafespace_keys_file line that lets it in.

use warnings;
use strict;

use Test::More;
use IPC::Open3;
use Symbol qw/ gensym /;
use Digest::SHA qw/ sha256_hex /;

use LSS::Test;

my $ADMIN = "$LSS::Test::TOP/tools/llmsafespace-admin";
my $KEY = qr/^lsp_[0-9a-z]{16}_[0-9A-Za-z]{32}$/;

my $t = LSS::Test->new(workers => 1);

# runs the command; returns (exit code, stdout, stderr), bounded in time

sub admin {
    my (@args) = @_;
    my ($out, $err) = ('', '');

    my $pid = open3(my $in, my $o, my $e = gensym, $ADMIN, @args);
    close $in;

    local $SIG{ALRM} = sub { kill 'KILL', $pid };
    alarm 60;
    { local $/; $out = <$o> // ''; $err = <$e> // ''; }
    waitpid($pid, 0);
    alarm 0;

    return ($? >> 8, $out, $err);
}

$t->pg_start(no_schema => 1);

my $db = $t->pg_conninfo();

my ($n) = $t->dbh()->selectrow_array(
    q{SELECT count(*) FROM pg_tables WHERE tablename = 'users'});
is($n, 0, 'the database starts empty');

my ($rc, $out, $err) = admin('init', '--db', $db);
is($rc, 0, 'init succeeds') or diag($err);
chomp(my $key = $out);
like($key, $KEY, 'and prints one API key on stdout');

my $rows = $t->dbh()->selectall_arrayref(
    q{SELECT u.name, u.role, k.id, k.secret_hash FROM users u }
    . q{JOIN api_keys k ON k.user_id = u.id});
is(scalar(@$rows), 1, 'one user with one key');
is($rows->[0][0], 'admin', 'named admin');
is($rows->[0][1], 'admin', 'with role admin');
my ($kid, $secret) = $key =~ /^lsp_([0-9a-z]{16})_(\S+)$/;
is($rows->[0][2], $kid, 'the key id is stored');
is($rows->[0][3], sha256_hex($secret // ''),
    'the secret only as its SHA-256');

my $conf = <<'EOF';
%%TEST_GLOBALS%%
events { }
http {
    %%TEST_GLOBALS_HTTP%%
    llmsafespace_postgres "%%PG%%" connections=1 backoff=50ms:300ms;

    server {
        listen 127.0.0.1:%%PORT_8080%%;
        location /api/v1/ { llmsafespace_api; }
    }
}
EOF

$t->run($conf);

sub whoami {
    my ($k) = @_;
    return $t->wait_for(sub {
        my $r = $t->get('/api/v1/user', key => $k);
        $r->{status} != 503 && $r }, 10);
}

my $r = whoami($key);
is($r->{status}, 200, 'the gateway accepts the key');
is($r->{json} && $r->{json}{role}, 'admin', 'as an admin');

($rc, $out, $err) = admin('init', '--db', $db);
is($rc, 0, 'init again succeeds');
unlike($out . $err, qr/lsp_/, 'and prints no key');
like($out, qr/admin already exists/, 'but says why');
($n) = $t->dbh()->selectrow_array('SELECT count(*) FROM api_keys');
is($n, 1, 'no key was added');

($rc, $out, $err) = admin('init', '--db', $db, '--force-new-key');
is($rc, 0, '--force-new-key succeeds');
chomp(my $key2 = $out);
like($key2, $KEY, 'and prints a new key');
isnt($key2, $key, 'a different one');
is(whoami($key2)->{status}, 200, 'the new key works');
is(whoami($key)->{status}, 200, 'the first one still does');

($rc, $out, $err) = admin('init', '--db', 'host=127.0.0.1 port=1 '
    . 'user=postgres password=hunter2 connect_timeout=5');
is($rc, 1, 'init against no server fails');
like($err, qr/cannot connect to PostgreSQL/, 'saying so');
unlike($err, qr/hunter2/, 'without the password');

# keyfile-entry, for llmsafespace_keys_file

($rc, $out, $err) = admin('keyfile-entry', '--user', 'u-ops',
    '--name', 'ops', '--role', 'user');
is($rc, 0, 'keyfile-entry succeeds');
chomp(my $line = $out);
like($line, qr/^[0-9a-z]{16}:[0-9a-f]{64}:u-ops:ops:user$/,
    'the keys-file line on stdout');
my ($key3) = $err =~ /(lsp_\S+)/;
like($key3 // '', $KEY, 'the key on stderr');
unlike($out, qr/lsp_/, 'not on stdout');

($rc, $out, $err) = admin('keyfile-entry', '--user', 'a:b',
    '--name', 'x', '--role', 'user');
is($rc, 1, 'a ":" in the user id is refused');

($rc) = admin('keyfile-entry', '--user', 'a', '--name', 'x',
    '--role', 'root');
is($rc, 2, 'an unknown role is a usage error');

$t->stop();

$t->write_file('keys', "$line\n");

$t->run(<<'EOF');
%%TEST_GLOBALS%%
events { }
http {
    %%TEST_GLOBALS_HTTP%%
    llmsafespace_keys_file %%TESTDIR%%/keys;

    server {
        listen 127.0.0.1:%%PORT_8080%%;
        location /api/v1/ { llmsafespace_api; }
    }
}
EOF

$r = $t->get('/api/v1/user', key => $key3);
is($r->{status}, 200, 'the keys-file key is accepted');
is($r->{json} && $r->{json}{role}, 'user', 'with its role');

$t->finish();
