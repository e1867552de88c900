package LSS::Stack;

# The whole stack for end-to-end tests: LSS::Test's nginx, Redis and
# PostgreSQL plus a real llmsafespace-controller with the local driver
# (runc / runsc containers of build/rootfs).  Adds methods to LSS::Test:
#
#   $t->controller_start(pools => { python => {minSize => 2, ...} });
#   $t->controller_stop;  $t->controller_kill;  (sandboxes keep running)
#   $t->stack_start(pools => {...}, quota => N)   all of it, nginx included
#   my ($status, $body, $r) = $t->api(POST => '/sandboxes', $key, json => {})
#   $t->sandbox_conf     the http{} directives of the sandbox API
#   $t->runner_location  the runner location, for the server{}
#   $t->nginx_user       workers unprivileged, in the runner sockets' group
#   $t->ready_count('python')
#
# At the end of the test file every container of the controller's state
# dir is destroyed, whatever happened.

use warnings;
use strict;

use File::Path qw/ make_path rmtree /;
use JSON::XS;
use POSIX qw/ :sys_wait_h /;
use Time::HiRes qw/ sleep time /;

use LSS::Test;

my $BIN = "$LSS::Test::TOP/build/controller/llmsafespace-controller";
my $MKBUNDLE = "$LSS::Test::TOP/runtimes/oci/mkbundle";

# the runner sockets' group: nginx workers reach the runners through it
our $SOCKET_GROUP = 'llmsafespace';

my @stacks;

package LSS::Test;

sub controller_state { "$_[0]{testdir}/state" }

sub controller_start {
    my ($self, %opts) = @_;
    my $d = $self->{testdir};
    my $state = $self->controller_state();

    make_path("$d/pools", $state);

    if ($opts{pools}) {
        unlink glob("$d/pools/*.yaml");

        for my $name (sort keys %{$opts{pools}}) {
            my $spec = { runtime => 'python:3.11', minSize => 1,
                         maxSize => 4, securityLevel => 'standard',
                         %{$opts{pools}{$name}} };
            my $yaml = "apiVersion: llmsafespace.dev/v1\nkind: WarmPool\n"
                . "metadata:\n  name: $name\nspec:\n";
            for my $k (sort keys %$spec) {
                $yaml .= "  $k: $spec->{$k}\n";
            }
            $self->write_file("pools/$name.yaml", $yaml);
        }
    }

    my @argv = ($BIN, '--state', $state,
        '--redis', $self->redis_address(),
        '--pg', $self->pg_conninfo(),
        '--pools', "$d/pools",
        '--tick-ms', $opts{tick_ms} // 100);
    # nginx workers run unprivileged, in the runner sockets' group
    system('groupadd', '--system', $SOCKET_GROUP) == 0
        or die "groupadd $SOCKET_GROUP failed\n"
        unless defined getgrnam($SOCKET_GROUP);
    push @argv, '--socket-group', $SOCKET_GROUP;

    open(my $log, '>>', "$d/controller.log") or die "controller.log: $!";

    my $pid = fork();
    die "fork: $!" unless defined $pid;

    if ($pid == 0) {
        open(STDOUT, '>&', $log);
        open(STDERR, '>&', $log);
        exec(@argv) or POSIX::_exit(127);
    }

    $self->{controller} = $pid;
    push @stacks, $self unless grep { $_ == $self } @stacks;

    return $pid;
}

sub controller_stop {
    my ($self, $signal) = @_;
    my $pid = delete $self->{controller} or return;

    kill $signal // 'TERM', $pid;

    my $deadline = time() + 30;
    while (time() < $deadline) {
        return if waitpid($pid, WNOHANG) == $pid;
        sleep 0.05;
    }

    kill 'KILL', $pid;
    waitpid($pid, 0);
}

sub controller_kill { $_[0]->controller_stop('KILL') }

sub controller_log { $_[0]->read_file('controller.log') }

sub ready_count {
    my ($self, $pool) = @_;
    return $self->redis()->llen("lss:pool:$pool:ready") // 0;
}

# The whole stack in one call: Redis, PostgreSQL with both schemas, the
# controller with the given pools, and nginx serving the API with the
# runner location (quota: live sandboxes per user).

sub stack_start {
    my ($self, %opts) = @_;

    $self->redis_start();
    $self->pg_start();
    $self->dbh()->do($self->read_file("$LSS::Test::TOP/sql/controller.sql"));
    $self->controller_start(pools => $opts{pools} // {});

    my $ttl = $opts{key_ttl} // '60s';

    $self->run(<<"EOF");
%%TEST_GLOBALS%%
${\ $self->nginx_user() }
events { }
http {
    %%TEST_GLOBALS_HTTP%%
    llmsafespace_redis %%REDIS%%;
    llmsafespace_postgres "%%PG%%";
    llmsafespace_key_cache zone=keys:1m ttl=$ttl;
    ${\ $self->sandbox_conf(quota => $opts{quota}) }
    server {
        listen 127.0.0.1:%%PORT_8080%%;
        client_max_body_size 1g;
        location /api/v1/ {
            llmsafespace_api;
        }
        ${\ $self->runner_location() }
    }
}
EOF

    return $self;
}

# api(METHOD, '/path under /api/v1', key, request options): the status,
# the decoded body and the response; every JSON answer is checked
# against docs/openapi.yaml (one test each)

sub api {
    my ($self, $method, $path, $key, %o) = @_;
    my $r = $self->request($method, "/api/v1$path", key => $key,
                           timeout => 120, %o);
    my $body = eval { JSON::XS->new->utf8->decode($r->{body}) };

    LSS::Test::openapi_ok($method, "/api/v1$path", $r->{status}, $r->{body})
        if ($r->{headers}{'content-type'} // '') =~ m!^application/json!;

    return ($r->{status}, $body, $r);
}

# the main-level "user" of an nginx that proxies to runners

sub nginx_user { "user nobody $SOCKET_GROUP;" }

# The sandbox API's http{}-level directives for this test's checkout.

sub sandbox_conf {
    my ($self, %opts) = @_;
    my $top = $LSS::Test::TOP;
    my $quota = $opts{quota} // 10;

    return "llmsafespace_runtimes $top/runtimes/index.json;\n"
        . "llmsafespace_profiles $top/conf/profiles.json;\n"
        . "llmsafespace_sandboxes contract=$top/controller/contract "
        . "quota=$quota;\n";
}

sub runner_location {
    return "include $LSS::Test::TOP/conf/llmsafespace-runner.conf;\n";
}

# everything the controller started, gone

sub controller_cleanup {
    my ($self) = @_;
    my $state = $self->controller_state();

    $self->controller_stop() if $self->{controller};

    return unless -d $state;

    for my $rt ('runc', 'runsc') {
        my $root = "$state/$rt";
        next unless -d $root;

        for my $id (split /\s+/, `$rt --root $root list -q 2>/dev/null`) {
            next unless $id;
            system("$rt --root $root delete --force $id >/dev/null 2>&1");
        }
    }

    for my $b (glob("$state/bundles/*")) {
        system("$MKBUNDLE cgroup-remove --bundle $b >/dev/null 2>&1")
            if -e "$b/config.json";
    }

    rmtree($state);
}

package LSS::Stack;

END {
    # keep the test's exit status: the clean-up's commands would set $?
    local $?;
    $_->controller_cleanup() for @stacks;
}

1;
