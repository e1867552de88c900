package LSS::Test;

# Test harness of the LLMSafeSpace gateway, in the spirit of nginx-tests'
# lib/Test/Nginx.pm: each test file gets a temporary prefix directory, a
# real stock nginx with our module, and real redis-server and PostgreSQL
# when it asks for them.  Everything is stopped when the file ends, even
# when it dies.  See docs/testing.md.

use warnings;
use strict;

use base qw/ Exporter /;

our @EXPORT = qw/ port /;

use Cwd qw/ abs_path /;
use Digest::SHA qw/ sha256_hex /;
use Errno qw/ EINTR /;
use Fcntl qw/ :flock /;
use File::Basename qw/ dirname /;
use File::Path qw/ make_path rmtree /;
use File::Temp qw/ tempdir /;
use IO::Socket::IP;
use JSON::XS;
use POSIX qw/ :sys_wait_h setsid /;
use Test::More qw//;
use Time::HiRes qw/ sleep time /;

our $NGINX = $ENV{LSS_TEST_NGINX} // '/usr/sbin/nginx';
our $TOP = $ENV{TOP}
    // abs_path(dirname(__FILE__) . '/../../..');
our $MODULE = $ENV{MODULE} // "$TOP/build/ngx_http_llmsafespace_module.so";
our $VALGRIND = $ENV{LSS_TEST_VALGRIND} ? 1 : 0;
our $PGBIN = $ENV{LSS_TEST_PGBIN} // '/usr/lib/postgresql/15/bin';

# under valgrind every step takes 20-50 times longer
our $SLOW = $VALGRIND ? 30 : 1;

my %ports;
my @instances;
my $json = JSON::XS->new->utf8->canonical->allow_nonref;

###############################################################################
# construction and teardown

sub new {
    my ($class, %opts) = @_;

    my $self = bless {
        _pid => $$,
        workers => $opts{workers} // 2,
        expect_alerts => [],
        started => 0,
    }, $class;

    Test::More::BAIL_OUT("no $NGINX") unless -x $NGINX;

    $self->{testdir} = tempdir('lss-test-XXXXXXXX', TMPDIR => 1);

    # nginx workers, redis and postgres run as other users: let them in
    chmod 0755, $self->{testdir};

    push @instances, $self;
    return $self;
}

sub testdir { $_[0]{testdir} }

sub DESTROY {
    my ($self) = @_;
    local ($?, $!, $@);

    return if !defined $self->{_pid} || $self->{_pid} != $$;

    $self->teardown();
}

END {
    local $?;

    for my $t (@instances) {
        next unless $t && $t->{_pid} == $$;
        $t->teardown();
    }
}

# a ^C or a kill stops the servers too

$SIG{INT} = $SIG{TERM} = sub { die "killed by signal\n" };

sub teardown {
    my ($self) = @_;

    return if $self->{torn_down}++;

    eval { $self->stop() };
    eval { $self->redis_stop() };
    eval { $self->pg_stop() };
    $self->stop_daemons();

    if ($ENV{LSS_TEST_CATLOG} && -e "$self->{testdir}/error.log") {
        print STDERR $self->read_file('error.log');
    }

    if ($ENV{LSS_TEST_LEAVE}) {
        print STDERR "# test directory left in $self->{testdir}\n";
    } else {
        eval { rmtree($self->{testdir}) };
    }
}

###############################################################################
# files and templates

sub read_file {
    my ($self, $name) = @_;
    local $/;

    my $path = $name =~ m!^/! ? $name : "$self->{testdir}/$name";
    open my $fh, '<', $path or return '';
    my $content = <$fh>;
    close $fh;

    return $content // '';
}

sub write_file {
    my ($self, $name, $content) = @_;

    my $path = $name =~ m!^/! ? $name : "$self->{testdir}/$name";
    make_path(dirname($path));
    open my $fh, '>', $path or die "can't create $path: $!\n";
    binmode $fh;
    print $fh $content;
    close $fh;

    return $path;
}

sub test_globals {
    my ($self) = @_;
    my $d = $self->{testdir};
    my $level = $ENV{LSS_TEST_DEBUG} ? 'debug' : 'info';

    return "load_module $MODULE;\n"
        . "pid $d/nginx.pid;\n"
        . "error_log $d/error.log $level;\n"
        . "daemon off;\n"
        . "master_process on;\n"
        . "worker_processes $self->{workers};\n";
}

sub test_globals_http {
    my ($self) = @_;
    my $d = $self->{testdir};

    # Debian's compiled-in temp paths are in /var/lib/nginx: keep out of it

    return "access_log $d/access.log;\n"
        . "client_body_temp_path $d/client_body_temp;\n"
        . "proxy_temp_path $d/proxy_temp;\n"
        . "fastcgi_temp_path $d/fastcgi_temp;\n"
        . "uwsgi_temp_path $d/uwsgi_temp;\n"
        . "scgi_temp_path $d/scgi_temp;\n";
}

# %%TEST_GLOBALS%%       main-level: load_module, pid, error_log, daemon...
# %%TEST_GLOBALS_HTTP%%  http-level: logs and temp paths in the test dir
# %%PORT_n%%             a free loopback port, the same n gives the same port
# %%MODULE%% %%TESTDIR%% %%REDIS%% %%REDIS_PASSWORD%% %%PG%%

sub expand {
    my ($self, $content) = @_;

    $content =~ s/%%TEST_GLOBALS%%/$self->test_globals()/ge;
    $content =~ s/%%TEST_GLOBALS_HTTP%%/$self->test_globals_http()/ge;
    $content =~ s/%%TESTDIR%%/$self->{testdir}/g;
    $content =~ s/%%MODULE%%/$MODULE/g;
    $content =~ s/%%PORT_(\d+)%%/port($1)/ge;
    $content =~ s/%%REDIS%%/$self->redis_address()/ge;
    $content =~ s/%%REDIS_PASSWORD%%/$self->{redis}{password} \/\/ ''/ge;
    $content =~ s/%%PG%%/$self->pg_conninfo()/ge;

    return $content;
}

sub write_file_expand {
    my ($self, $name, $content) = @_;
    return $self->write_file($name, $self->expand($content));
}

# a free TCP port on 127.0.0.1, held by nobody; the same number maps to
# the same port for the whole test file.  Ports come from below the
# kernel's ephemeral range so outgoing connections do not take them.

sub port {
    my ($num) = @_;

    return $ports{$num} if defined $ports{$num};

    for (1 .. 100) {
        my $p = 20000 + int(rand(12000));
        next if grep { $_ == $p } values %ports;

        my $s = IO::Socket::IP->new(
            Proto => 'tcp',
            LocalHost => '127.0.0.1',
            LocalPort => $p,
            Listen => 1,
            ReuseAddr => 1,
        ) or next;
        close $s;

        return $ports{$num} = $p;
    }

    die "no free port found\n";
}

###############################################################################
# nginx

sub nginx_cmd {
    my ($self, @args) = @_;
    my @cmd = ($NGINX, '-p', "$self->{testdir}/", @args);

    return @cmd unless $VALGRIND;

    return ('valgrind', '--tool=memcheck', '--error-exitcode=99',
        '--leak-check=full', '--show-leak-kinds=definite',
        '--errors-for-leak-kinds=definite', '--trace-children=yes',
        '--child-silent-after-fork=no', '--num-callers=30',
        "--suppressions=$TOP/t/valgrind.supp",
        "--log-file=$self->{testdir}/valgrind.%p.log", @cmd);
}

# Writes nginx.conf from a template and starts nginx in the foreground as
# our child (daemon off), master process and workers, then waits until
# every listen port accepts connections.

sub run {
    my ($self, $conf, %opts) = @_;

    $self->write_file_expand('nginx.conf', $conf) if defined $conf;

    unlink "$self->{testdir}/nginx.pid";

    my $pid = fork() // die "fork: $!\n";

    if ($pid == 0) {
        setsid();
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', "$self->{testdir}/stderr.log";
        open STDERR, '>>', "$self->{testdir}/stderr.log";
        exec($self->nginx_cmd('-c', 'nginx.conf', '-e', 'error.log'))
            or POSIX::_exit(127);
    }

    $self->{nginx_pid} = $pid;
    $self->{started} = 1;

    my $conf_text = $self->read_file('nginx.conf');
    my @listen = $conf_text =~ /^\s*listen\s+(127\.0\.0\.1:\d+)/gm;

    my $deadline = time() + 10 * $SLOW;

    while (time() < $deadline) {
        if (waitpid($pid, WNOHANG) == $pid) {
            $self->{started} = 0;
            die "nginx exited at start: "
                . $self->read_file('stderr.log')
                . $self->read_file('error.log');
        }

        if (-s "$self->{testdir}/nginx.pid"
            && !grep { !$self->can_connect($_) } @listen)
        {
            $self->wait_workers() unless $opts{no_wait_workers};
            return $self;
        }

        sleep 0.05;
    }

    die "nginx did not start within " . 10 * $SLOW . " s\n";
}

sub can_connect {
    my ($self, $peer) = @_;
    my $s = IO::Socket::IP->new(PeerAddr => $peer, Proto => 'tcp',
        Timeout => 1);
    return defined $s;
}

sub master_pid {
    my ($self) = @_;
    my $pid = $self->read_file('nginx.pid');
    $pid =~ s/\s+//g;
    return $pid || $self->{nginx_pid};
}

# pids of the master's children (its workers, including old ones still
# draining after a reload)

sub worker_pids {
    my ($self) = @_;
    my $master = $self->{nginx_pid} or return ();
    my @pids;

    for my $stat (glob '/proc/[0-9]*/stat') {
        open my $fh, '<', $stat or next;
        my $line = <$fh> // next;
        close $fh;
        my ($pid, $ppid) = $line =~ /^(\d+) \(.*\) \S+ (\d+)/ or next;
        push @pids, $pid if $ppid == $master;
    }

    @pids = sort { $a <=> $b } @pids;
    return wantarray ? @pids : scalar @pids;
}

# the workers fork after the pid file is written: wait until they exist,
# so that a test's first request is not racing their init_process

sub wait_workers {
    my ($self) = @_;
    my $deadline = time() + 10 * $SLOW;

    while (time() < $deadline) {
        return 1 if scalar($self->worker_pids()) >= $self->{workers};
        sleep 0.05;
    }

    return 0;
}

sub reload {
    my ($self, $conf) = @_;

    $self->write_file_expand('nginx.conf', $conf) if defined $conf;

    return $self unless $self->{started};

    kill 'HUP', $self->{nginx_pid};
    return $self;
}

sub stop {
    my ($self) = @_;

    return $self unless $self->{started};

    my $pid = $self->{nginx_pid};
    my $exited = 0;

    kill 'QUIT', $pid;

    for (1 .. 300 * $SLOW) {
        if (waitpid($pid, WNOHANG) != 0) {
            $self->{nginx_status} = $?;
            $exited = 1;
            last;
        }
        sleep 0.05;
    }

    if (!$exited) {
        $self->{stop_timeout} = 1;
        kill 'TERM', $pid;

        for (1 .. 100 * $SLOW) {
            if (waitpid($pid, WNOHANG) != 0) {
                $exited = 1;
                last;
            }
            sleep 0.05;
        }

        if (!$exited) {
            kill 'KILL', -$pid;
            waitpid($pid, 0);
        }
    }

    # workers of a killed master must not outlive the test
    kill 'KILL', -$pid;

    $self->{started} = 0;
    return $self;
}

# Runs "nginx -t" on a template; returns (exit code, output).

sub nginx_test {
    my ($self, $conf, $name) = @_;

    $name //= 'test.conf';
    $self->write_file_expand($name, $conf);

    my $out = "$self->{testdir}/nginx-t.out";
    my $pid = fork() // die "fork: $!\n";

    if ($pid == 0) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>', $out;
        open STDERR, '>&', \*STDOUT;
        exec($self->nginx_cmd('-t', '-c', $name, '-e', 'nginx-t.log'))
            or POSIX::_exit(127);
    }

    waitpid($pid, 0);
    my $rc = $? >> 8;

    return ($rc, $self->read_file('nginx-t.out'));
}

# Lets a test expect [alert]/[crit]/[emerg] lines matching a pattern.

sub expect_alert {
    my ($self, $re) = @_;
    push @{$self->{expect_alerts}}, $re;
    return $self;
}

sub error_log_alerts {
    my ($self) = @_;
    my @lines = $self->read_file('error.log')
        =~ /^.*\[(?:alert|crit|emerg)\].*$/gm;

    return grep {
        my $l = $_;
        !grep { $l =~ $_ } @{$self->{expect_alerts}}
    } @lines;
}

# The end of every test file: stop everything, then assert the error log
# holds no alert and, under valgrind, that memcheck found nothing.

sub finish {
    my ($self) = @_;

    $self->stop();

    Test::More::is(join("\n", $self->error_log_alerts()), '',
        'no alerts in error.log');

    if ($self->{nginx_pid}) {
        Test::More::ok(!$self->{stop_timeout}, 'nginx quit gracefully');
        Test::More::is($self->{nginx_status} // 0, 0, 'nginx exit status');
    }

    $self->check_valgrind() if $VALGRIND;

    $self->redis_stop();
    $self->pg_stop();

    Test::More::done_testing();
}

sub check_valgrind {
    my ($self) = @_;
    my @logs = glob "$self->{testdir}/valgrind.*.log";
    my @bad;

    for my $log (@logs) {
        my $text = $self->read_file($log);

        # a process that exec()s (nothing here) or is still running has
        # no summary; every nginx process ends with one
        next if $text !~ /ERROR SUMMARY/;

        if ($text !~ /ERROR SUMMARY: 0 errors/) {
            push @bad, $log;

            # the first report says what it is; the log has the rest
            my $what = qr/bytes in|Invalid|Conditional|uninit|Mismatched/;
            my ($first) = $text =~ /^(==\d+== [^\n]*$what.*?\n)==\d+== *\n/sm;
            Test::More::diag($ENV{LSS_TEST_VERBOSE} ? $text
                : $first // '');
        }

        # a leak is ours when a frame of its stack is ours
        my $leak = qr/\d[\d,]* (?:\([^)]*\) )?bytes in [\d,]+ blocks are/
            . qr/ definitely lost.*?\n(?:==\d+==\s+(?:at|by).*\n)+/;

        while ($text =~ /($leak)/g) {
            my $block = $1;
            push @bad, "$log (leak: $block)" if $block =~ /llmsafespace/;
        }
    }

    Test::More::ok(@logs > 0, 'valgrind logs written');
    Test::More::is(join("\n", @bad), '', 'valgrind: no errors, no leaks');
}

###############################################################################
# background helpers (backends written in Perl)

sub run_daemon {
    my ($self, $code, @args) = @_;

    my $pid = fork() // die "fork: $!\n";

    if ($pid == 0) {
        $self->{_pid} = 0;
        @instances = ();
        if (ref $code eq 'CODE') {
            $code->(@args);
            POSIX::_exit(0);
        }
        exec($code, @args) or POSIX::_exit(127);
    }

    push @{$self->{daemons}}, $pid;
    return $pid;
}

# A stand-in runner on a unix socket: a Mojolicious app in a daemon of
# its own, whose routes $routes->($app) adds.  True once it listens.
sub stand_in_runner {
    my ($self, $sock, $routes) = @_;

    $self->run_daemon(sub {
        require Mojolicious::Lite;
        require Mojo::Server::Daemon;
        require Mojo::IOLoop;

        my $app = Mojolicious::Lite->new;
        $app->log->level('fatal');
        $routes->($app);

        Mojo::Server::Daemon->new(app => $app, silent => 1,
            listen => ['http+unix://' . ($sock =~ s!/!%2F!gr)])->run;
    });

    return $self->wait_for(sub { -S $sock }, 10);
}

sub stop_daemons {
    my ($self) = @_;

    while (my $pid = shift @{$self->{daemons} // []}) {
        kill 'TERM', $pid;
        my $exited = 0;
        for (1 .. 100) {
            if (waitpid($pid, WNOHANG) != 0) { $exited = 1; last }
            sleep 0.05;
        }
        if (!$exited) {
            kill 'KILL', $pid;
            waitpid($pid, 0);
        }
    }
}

sub wait_port {
    my ($self, $port, $timeout) = @_;
    my $deadline = time() + ($timeout // 10 * $SLOW);

    while (time() < $deadline) {
        return 1 if $self->can_connect("127.0.0.1:$port");
        sleep 0.05;
    }

    return 0;
}

###############################################################################
# redis-server

# redis_start(password => S, unix => 1): a private redis-server on a
# loopback port (and a unix socket when asked), no persistence.

sub redis_start {
    my ($self, %opts) = @_;

    my $r = $self->{redis} //= {};

    if (!defined $r->{port}) {
        $r->{port} = port('redis');
        $r->{password} = $opts{password};
        $r->{unix} = $opts{unix} ? "$self->{testdir}/redis.sock" : undef;
        $r->{dir} = "$self->{testdir}/redis";
        make_path($r->{dir});
    }

    return $self if $r->{pid};

    my @args = ('--port', $r->{port}, '--bind', '127.0.0.1',
        '--dir', $r->{dir}, '--save', '', '--appendonly', 'no',
        '--daemonize', 'no', '--logfile', "$r->{dir}/redis.log",
        '--protected-mode', 'no');
    push @args, '--requirepass', $r->{password} if defined $r->{password};
    push @args, '--unixsocket', $r->{unix}, '--unixsocketperm', '777'
        if $r->{unix};

    my $pid = fork() // die "fork: $!\n";

    if ($pid == 0) {
        setsid();
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', "$r->{dir}/stdout.log";
        open STDERR, '>&', \*STDOUT;
        exec('redis-server', @args) or POSIX::_exit(127);
    }

    $r->{pid} = $pid;

    $self->wait_port($r->{port})
        or die "redis-server did not start: "
            . $self->read_file("$r->{dir}/redis.log");

    return $self;
}

sub redis_stop {
    my ($self) = @_;
    my $r = $self->{redis} or return $self;
    my $pid = delete $r->{pid} or return $self;

    kill 'TERM', $pid;

    for (1 .. 100) {
        return $self if waitpid($pid, WNOHANG) != 0;
        sleep 0.05;
    }

    kill 'KILL', $pid;
    waitpid($pid, 0);

    return $self;
}

sub redis_address {
    my ($self) = @_;
    my $r = $self->{redis} or die "%%REDIS%% used before redis_start\n";
    return $r->{unix} ? "unix:$r->{unix}" : "127.0.0.1:$r->{port}";
}

sub redis_port { $_[0]{redis}{port} }

# a client of the test's redis (the Redis module from libredis-perl)

sub redis {
    my ($self) = @_;
    require Redis;

    my $r = $self->{redis} or die "redis not started\n";
    my %args = (server => "127.0.0.1:$r->{port}", reconnect => 2,
        cnx_timeout => 2, read_timeout => 5);
    $args{password} = $r->{password} if defined $r->{password};

    return Redis->new(%args);
}

###############################################################################
# PostgreSQL 15

# initdb takes seconds: it runs once into build/pg-template (kept between
# runs, keyed by the server version) and each test file copies it.

sub pg_template {
    my ($self) = @_;

    my ($version) = `$PGBIN/postgres --version` =~ /(\d+(?:\.\d+)*)/
        or die "no PostgreSQL server in $PGBIN\n";

    my $base = $ENV{LSS_TEST_PG_TEMPLATE} // "$TOP/build/pg-template";
    my $tpl = "$base/$version";

    return $tpl if -e "$tpl/ready";

    make_path($base);
    open my $lock, '>', "$base.lock" or die "lock: $!\n";
    flock($lock, LOCK_EX) or die "flock: $!\n";

    if (!-e "$tpl/ready") {
        rmtree($tpl);
        make_path($tpl);

        # initdb runs as the postgres user, which may not be able to reach
        # the checkout (a clone in /root): it works in /tmp, and we copy

        my $work = tempdir('lss-initdb-XXXXXXXX', TMPDIR => 1,
            CLEANUP => 1);
        chmod 0755, $work;
        $self->pg_chown($work);

        my $log = "$work/initdb.log";

        my $rc = $self->pg_as_user(sub {
            open STDOUT, '>', $log;
            open STDERR, '>&', \*STDOUT;
            exec("$PGBIN/initdb", '-D', "$work/data", '-U', 'postgres',
                '-A', 'trust', '-E', 'UTF8', '--locale=C', '--no-sync')
                or POSIX::_exit(127);
        });

        die "initdb failed: " . $self->read_file($log) if $rc != 0;

        system('cp', '-a', "$work/data", "$tpl/data") == 0
            or die "copying the initdb result failed\n";
        rmtree($work);

        open my $fh, '>', "$tpl/ready" or die "$tpl/ready: $!\n";
        close $fh;
    }

    close $lock;
    return $tpl;
}

# PostgreSQL refuses to run as root: as root, it runs as "postgres"

sub pg_user_ids {
    return () if $> != 0;
    my @pw = getpwnam($ENV{LSS_TEST_PG_USER} // 'postgres')
        or die "no postgres user to run PostgreSQL as\n";
    return ($pw[2], $pw[3]);
}

sub pg_chown {
    my ($self, @paths) = @_;
    my ($uid, $gid) = pg_user_ids() or return;
    system('chown', '-R', "$uid:$gid", @paths) == 0 or die "chown failed\n";
}

sub pg_as_user {
    my ($self, $code) = @_;
    my ($uid, $gid) = pg_user_ids();

    my $pid = fork() // die "fork: $!\n";

    if ($pid == 0) {
        setsid();
        if (defined $uid) {
            $) = "$gid $gid";
            POSIX::setgid($gid) or POSIX::_exit(126);
            POSIX::setuid($uid) or POSIX::_exit(126);
            $ENV{HOME} = '/tmp';
        }
        $code->();
        POSIX::_exit(0);
    }

    return $pid if wantarray;
    waitpid($pid, 0);
    return $? >> 8;
}

sub pg_start {
    my ($self, %opts) = @_;

    my $pg = $self->{pg} //= {};

    if (!defined $pg->{dir}) {
        my $tpl = $self->pg_template();

        $pg->{dir} = "$self->{testdir}/pg";
        $pg->{port} = port('postgres');
        system('cp', '-a', "$tpl/data", "$pg->{dir}") == 0
            or die "copying the PostgreSQL template failed\n";
        chmod 0700, $pg->{dir};
        make_path("$self->{testdir}/pgsock");
        $self->pg_chown($pg->{dir}, "$self->{testdir}/pgsock");
        $pg->{fresh} = 1;
    }

    return $self if $pg->{pid};

    my $log = "$self->{testdir}/pg.log";
    open my $fh, '>>', $log; close $fh;
    $self->pg_chown($log);

    my ($pid) = $self->pg_as_user(sub {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', $log;
        open STDERR, '>&', \*STDOUT;
        exec("$PGBIN/postgres", '-D', $pg->{dir}, '-p', $pg->{port},
            '-k', "$self->{testdir}/pgsock",
            '-c', 'listen_addresses=127.0.0.1', '-c', 'fsync=off',
            '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off',
            '-c', 'max_connections=50', '-c', 'shared_buffers=16MB')
            or POSIX::_exit(127);
    });

    $pg->{pid} = $pid;

    # accepting TCP is not enough: the server may still be recovering

    my $deadline = time() + 30 * $SLOW;
    my $ok = 0;

    while (time() < $deadline) {
        die "postgres exited: " . $self->read_file($log)
            if waitpid($pid, WNOHANG) == $pid;

        if ($self->can_connect("127.0.0.1:$pg->{port}")) {
            my $dbh = eval { $self->pg_dbh('postgres') };
            if ($dbh) { $dbh->disconnect; $ok = 1; last }
        }
        sleep 0.1;
    }

    die "postgres did not start: " . $self->read_file($log) unless $ok;

    if (delete $pg->{fresh}) {
        my $dbh = $self->pg_dbh('postgres');
        $dbh->do('CREATE DATABASE llmsafespace');
        $dbh->disconnect;
        $self->pg_schema() unless $opts{no_schema};
    }

    return $self;
}

sub pg_stop {
    my ($self) = @_;
    my $pg = $self->{pg} or return $self;
    my $pid = delete $pg->{pid} or return $self;

    delete $pg->{dbh};

    # SIGINT: fast shutdown, sessions are cut; SIGQUIT if it lingers
    kill 'INT', $pid;

    for (1 .. 200) {
        return $self if waitpid($pid, WNOHANG) != 0;
        sleep 0.05;
    }

    kill 'QUIT', $pid;
    waitpid($pid, 0);

    return $self;
}

sub pg_conninfo {
    my ($self) = @_;
    my $pg = $self->{pg} or die "%%PG%% used before pg_start\n";
    return "host=127.0.0.1 port=$pg->{port} dbname=llmsafespace "
        . "user=postgres";
}

sub pg_port { $_[0]{pg}{port} }

sub pg_dbh {
    my ($self, $db) = @_;
    require DBI;

    my $pg = $self->{pg} or die "postgres not started\n";

    return DBI->connect(
        "dbi:Pg:dbname=" . ($db // 'llmsafespace')
            . ";host=127.0.0.1;port=$pg->{port}",
        'postgres', '',
        { RaiseError => 1, PrintError => 0, AutoCommit => 1,
          pg_server_prepare => 0 });
}

# a cached handle on the llmsafespace database

sub dbh {
    my ($self) = @_;
    my $pg = $self->{pg} or die "postgres not started\n";
    $pg->{dbh} = $self->pg_dbh() unless $pg->{dbh} && $pg->{dbh}->ping;
    return $pg->{dbh};
}

sub pg_schema {
    my ($self) = @_;
    my $file = "$TOP/sql/schema.sql";

    return 0 unless -e $file;

    my $sql = $self->read_file($file);
    my $dbh = $self->dbh();

    # DBD::Pg runs a multi-statement string in one go when not prepared
    $dbh->do($sql);

    return 1;
}

###############################################################################
# users and API keys

my @ALNUM = ('0' .. '9', 'A' .. 'Z', 'a' .. 'z');
my @LOWER = ('0' .. '9', 'a' .. 'z');

sub random_string {
    my ($n, $chars) = @_;
    my $set = $chars // \@ALNUM;
    return join '', map { $set->[int(rand(@$set))] } 1 .. $n;
}

# a new key: { key => 'lsp_<id>_<secret>', id, secret, hash }

sub make_key {
    my ($self) = @_;

    my $id = random_string(16, \@LOWER);
    my $secret = random_string(32);

    return {
        key => "lsp_${id}_$secret",
        id => $id,
        secret => $secret,
        hash => sha256_hex($secret),
    };
}

# create_user(name => N, role => 'user'|'admin'): the user's id

sub create_user {
    my ($self, %opts) = @_;

    my $name = $opts{name} // 'user-' . random_string(8, \@LOWER);
    my $role = $opts{role} // 'user';

    my ($id) = $self->dbh()->selectrow_array(
        'INSERT INTO users (id, name, role) VALUES (?, ?, ?) RETURNING id',
        undef, 'usr-' . random_string(16, \@LOWER), $name, $role);

    return $id;
}

# create_key(user_id): a key stored in the database (hash only)

sub create_key {
    my ($self, $user_id, %opts) = @_;
    my $k = $self->make_key();

    $self->dbh()->do(
        'INSERT INTO api_keys (id, secret_hash, user_id) '
        . 'VALUES (?, ?, ?)', undef, $k->{id}, $k->{hash}, $user_id);

    $k->{user_id} = $user_id;
    return $k;
}

sub revoke_key {
    my ($self, $k) = @_;
    $self->dbh()->do('UPDATE api_keys SET revoked_at = now() '
        . 'WHERE id = ?', undef, $k->{id});
}

# write_keys_file(name, [ {user_id, user_name, role}, ... ]): writes the
# llmsafespace_keys_file format and returns the keys (with their secret)

sub write_keys_file {
    my ($self, $name, @users) = @_;
    my (@keys, $text);

    @users = ({}) unless @users;

    for my $u (@users) {
        my $k = $self->make_key();
        $k->{user_id} = $u->{user_id} // 'u-' . random_string(8, \@LOWER);
        $k->{user_name} = $u->{user_name} // "name-$k->{user_id}";
        $k->{role} = $u->{role} // 'user';
        $text //= '';
        $text .= "$k->{id}:$k->{hash}:$k->{user_id}:$k->{user_name}:"
            . "$k->{role}\n";
        push @keys, $k;
    }

    my $path = $self->write_file($name, "# test keys\n$text");
    chmod 0644, $path;

    return wantarray ? @keys : $keys[0];
}

###############################################################################
# HTTP

# One request on a fresh connection; returns
#   { status, headers => { lowercased name => value }, body, json, raw }
# json is undef unless the body is JSON.  Never waits more than timeout s.

sub request {
    my ($self, $method, $path, %opts) = @_;

    my $port = $opts{port} // port(8080);
    my $body = $opts{body};
    my %h = %{$opts{headers} // {}};

    if (exists $opts{json}) {
        $body = $json->encode($opts{json});
        $h{'Content-Type'} //= 'application/json';
    }

    $h{Authorization} = "Bearer $opts{key}" if defined $opts{key};

    my $req = "$method $path HTTP/1.1\r\n"
        . "Host: " . ($opts{host} // 'localhost') . "\r\n"
        . "Connection: close\r\n";
    # a header given as undef is left out (and not added either)
    $req .= "$_: $h{$_}\r\n" for grep { defined $h{$_} } sort keys %h;
    $req .= "Content-Length: " . length($body) . "\r\n"
        if defined $body && !grep { lc $_ eq 'content-length' } keys %h;
    $req .= "\r\n";
    $req .= $body if defined $body;

    my $raw = $self->http($req, port => $port,
        timeout => $opts{timeout});

    return parse_response($raw);
}

sub get { my ($self, $path, %o) = @_; $self->request('GET', $path, %o) }

# raw request text in, raw response text out

sub http {
    my ($self, $req, %opts) = @_;

    my $port = $opts{port} // port(8080);
    my $timeout = ($opts{timeout} // 10) * $SLOW;
    my $reply = '';

    my $s = IO::Socket::IP->new(PeerAddr => "127.0.0.1:$port",
        Proto => 'tcp', Timeout => $timeout)
        or return '';

    eval {
        local $SIG{ALRM} = sub { die "timeout\n" };
        local $SIG{PIPE} = 'IGNORE';
        alarm $timeout;

        $s->syswrite($req);

        while (1) {
            my $n = $s->sysread(my $buf, 65536);
            last unless $n;
            $reply .= $buf;
        }

        alarm 0;
    };
    alarm 0;

    $self->{last_error} = $@;
    close $s;

    return $reply;
}

sub parse_response {
    my ($raw) = @_;

    my %r = (raw => $raw, status => 0, headers => {}, body => '');

    my ($head, $body) = split /\r\n\r\n/, $raw, 2;
    return \%r unless defined $head && $head =~ m!^HTTP/\d\.\d (\d{3})!;

    $r{status} = $1;

    for my $line (split /\r\n/, $head) {
        next unless $line =~ /^([^:\s]+):\s*(.*)$/;
        my $name = lc $1;
        $r{headers}{$name} = exists $r{headers}{$name}
            ? "$r{headers}{$name}, $2" : $2;
    }

    $body //= '';

    if (($r{headers}{'transfer-encoding'} // '') =~ /chunked/i) {
        my $out = '';
        while ($body =~ s/^([0-9a-fA-F]+)[^\r\n]*\r\n//) {
            my $n = hex $1;
            last if $n == 0;
            $out .= substr($body, 0, $n, '');
            $body =~ s/^\r\n//;
        }
        $body = $out;
    }

    $r{body} = $body;

    if (($r{headers}{'content-type'} // '') =~ m!application/json!
        || $body =~ /^\s*[\{\[]/)
    {
        $r{json} = eval { $json->decode($body) };
    }

    return \%r;
}

# Many requests with a bounded concurrency, on Mojo's event loop.
#   parallel(count => N, concurrency => C, timeout => S,
#            request => sub { my $i = shift; return (METHOD, URL_PATH,
#                                                    {headers}, $body) })
# Returns a list of { status, body, error } in request order.  The whole
# run is bounded by timeout seconds: what has not finished then is an
# error 'timeout'.

sub parallel {
    my ($self, %opts) = @_;
    require Mojo::UserAgent;
    require Mojo::IOLoop;

    my $count = $opts{count} // 100;
    my $conc = $opts{concurrency} // 10;
    my $port = $opts{port} // port(8080);
    my $timeout = ($opts{timeout} // 60) * $SLOW;
    my $gen = $opts{request}
        // sub { ('GET', '/', {}, undef) };

    # keepalive => 0: a new connection per request
    my $ua = Mojo::UserAgent->new(
        max_connections => $opts{keepalive} // $conc,
        request_timeout => $timeout, inactivity_timeout => $timeout,
        connect_timeout => 10 * $SLOW);
    $ua->proxy->not([]);

    my (@results, $next, $done, $start);
    $next = 0;
    $done = 0;

    $start = sub {
        return if $next >= $count;

        my $i = $next++;
        my ($method, $path, $headers, $body) = $gen->($i);
        my $url = "http://127.0.0.1:$port$path";

        my $tx = $ua->build_tx($method => $url => $headers // {},
            defined $body ? $body : ());

        $ua->start($tx => sub {
            my ($ua, $tx) = @_;
            my $err = $tx->error;
            $results[$i] = {
                status => $tx->res->code // 0,
                body => $tx->res->body,
                error => $err && !$tx->res->code ? $err->{message} : undef,
            };
            $done++;
            if ($done >= $count) {
                Mojo::IOLoop->stop;
            } else {
                $start->();
            }
        });
    };

    $start->() for 1 .. ($conc < $count ? $conc : $count);

    # during => sub {}, every => S: runs while the requests fly (reloads)
    my $during = $opts{during}
        ? Mojo::IOLoop->recurring($opts{every} // 0.2 => $opts{during})
        : undef;

    my $timer = Mojo::IOLoop->timer($timeout => sub { Mojo::IOLoop->stop });
    Mojo::IOLoop->start if $count > 0;
    Mojo::IOLoop->remove($timer);
    Mojo::IOLoop->remove($during) if $during;

    for my $i (0 .. $count - 1) {
        $results[$i] //= { status => 0, body => '', error => 'timeout' };
    }

    undef $start;
    return @results;
}

# Polls $check every 50 ms until it returns true or timeout seconds pass
# (a bounded loop, not a timing assertion); returns the last result.

sub wait_for {
    my ($self, $check, $timeout) = @_;
    my $deadline = time() + ($timeout // 10) * $SLOW;
    my $res;

    while (1) {
        $res = $check->();
        return $res if $res || time() >= $deadline;
        sleep 0.05;
    }
}

# GET /metrics, parsed: { 'name{label="v",...}' => value }, plus the
# response itself in {_response} and the declared types in {_type}{name}

sub metrics {
    my ($self, %opts) = @_;
    my %m;

    my $r = $self->get($opts{path} // '/metrics', %opts);
    $m{_response} = $r;

    for my $line (split /\n/, $r->{body}) {
        if ($line =~ /^# TYPE (\S+) (\S+)$/) {
            $m{_type}{$1} = $2;
            next;
        }
        next if $line =~ /^#/ || $line eq '';
        my ($key, $value) = $line =~ /^(\S+) (\S+)$/ or next;
        $m{$key} = $value;
    }

    return \%m;
}

# A blocking WebSocket client on Mojo:
#   my $ws = $t->websocket('/path', headers => {...});
#   $ws->send('text');  my $msg = $ws->recv(timeout);  $ws->close;
# Returns undef (and sets $t->{ws_error}) when the handshake fails; the
# handshake's HTTP status is in $t->{ws_status}.

sub websocket {
    my ($self, $path, %opts) = @_;
    return LSS::Test::WS->connect($self, $path, %opts);
}

package LSS::Test::WS;

use Time::HiRes qw/ time /;

sub connect {
    my ($class, $t, $path, %opts) = @_;
    require Mojo::UserAgent;
    require Mojo::IOLoop;

    my $port = $opts{port} // LSS::Test::port(8080);
    my $timeout = ($opts{timeout} // 10) * $LSS::Test::SLOW;
    my $self = bless { queue => [], closed => 0 }, $class;

    my $ua = Mojo::UserAgent->new(inactivity_timeout => 0,
        connect_timeout => $timeout);
    $ua->proxy->not([]);
    $self->{ua} = $ua;

    my $done = 0;

    $ua->websocket("ws://127.0.0.1:$port$path" => $opts{headers} // {}
        => sub {
            my ($ua, $tx) = @_;
            $done = 1;
            $t->{ws_status} = $tx->res->code;

            if (!$tx->is_websocket) {
                $t->{ws_error} = $tx->error ? $tx->error->{message}
                    : 'not a websocket';
                $t->{ws_body} = $tx->res->body;
                return;
            }

            $self->{tx} = $tx;
            $tx->on(message => sub { push @{$self->{queue}}, $_[1] });
            $tx->on(finish => sub {
                $self->{closed} = 1;
                $self->{close_code} = $_[1];
            });
        });

    my $deadline = time() + $timeout;
    Mojo::IOLoop->one_tick while !$done && time() < $deadline;

    return $self->{tx} ? $self : undef;
}

sub send {
    my ($self, $msg) = @_;
    return 0 if $self->{closed};
    my $sent = 0;
    $self->{tx}->send($msg => sub { $sent = 1 });
    my $deadline = time() + 5 * $LSS::Test::SLOW;
    Mojo::IOLoop->one_tick while !$sent && !$self->{closed}
        && time() < $deadline;
    return $sent;
}

# the next message, or undef after timeout seconds or on close

sub recv {
    my ($self, $timeout) = @_;
    my $deadline = time() + ($timeout // 5) * $LSS::Test::SLOW;

    while (!@{$self->{queue}} && !$self->{closed} && time() < $deadline) {
        my $id = Mojo::IOLoop->timer(0.05 => sub {});
        Mojo::IOLoop->one_tick;
        Mojo::IOLoop->remove($id);
    }

    return shift @{$self->{queue}};
}

sub closed { $_[0]{closed} }

sub close {
    my ($self) = @_;
    return unless $self->{tx} && !$self->{closed};
    $self->{tx}->finish;
    my $deadline = time() + 2;
    Mojo::IOLoop->one_tick while !$self->{closed} && time() < $deadline;
}

1;

###############################################################################
# OpenAPI: real responses against docs/openapi.yaml (t/lib/openapi_check.py)

package LSS::Test;

push @EXPORT, qw/ openapi_ok openapi_schema_ok /;

our $OPENAPI = $ENV{LSS_TEST_OPENAPI} // "$TOP/docs/openapi.yaml";

# openapi_ok($method, $path, $status, $body, $name): one test, passing when
# the body is what the document says the operation answers with $status
# ($path as requested, /api/v1 and query string included)

sub openapi_ok {
    my ($method, $path, $status, $body, $name) = @_;
    return _openapi_check([ $method, $path, $status ], $body,
        $name // "openapi: $method $path $status");
}

# openapi_schema_ok($schema, $body, $name): against components/schemas/NAME
# (e.g. StreamServerMessage for a WebSocket message)

sub openapi_schema_ok {
    my ($schema, $body, $name) = @_;
    return _openapi_check([ '--schema', $schema ], $body,
        $name // "openapi: $schema");
}

sub _openapi_check {
    my ($args, $body, $name) = @_;

    my $file = File::Temp->new(TEMPLATE => 'lss-openapi-XXXXXXXX',
        TMPDIR => 1);
    binmode $file;
    print $file $body // '';
    close $file;

    my $out = File::Temp->new(TEMPLATE => 'lss-openapi-XXXXXXXX',
        TMPDIR => 1);

    my $pid = fork() // die "fork: $!\n";

    if ($pid == 0) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>', $out->filename;
        open STDERR, '>&', \*STDOUT;
        exec('/usr/bin/python3', "$TOP/t/lib/openapi_check.py", $OPENAPI,
            @$args, $file->filename) or POSIX::_exit(127);
    }

    waitpid($pid, 0);
    my $rc = $? >> 8;
    my $said = do { local $/; open my $fh, '<', $out->filename; <$fh> };

    local $Test::Builder::Level = $Test::Builder::Level + 2;
    my $ok = Test::More::ok($rc == 0, $name);
    Test::More::diag($said // "openapi_check.py exited with $rc") if !$ok;

    return $ok;
}

1;
