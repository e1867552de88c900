#!/bin/sh
# Runs inside the tree being built, as root, in both builds of a runtime:
# chroot'ed by mkrootfs.sh (local rootfs) and as a RUN step of the
# Dockerfiles (Kubernetes images).  One script, so both builds install,
# configure and strip the same way.
#
#   install.sh [--sandbox-user] [--runner-deps FILE] PACKAGES_FILE...
#
# --sandbox-user also creates the user executions run as (uid/gid 1000,
# home /workspace), /workspace and /run/llmsafespace.
# --runner-deps FILE (runtimes/runner/RUNTIME_DEPS) adds the runner's
# shared libraries: only its lib* entries, since interpreters and package
# managers belong to each runtime's own packages.txt (the base runtime
# stays a shell; the python runtime carries no Node.js).
# LSS_APT_CACHE_SHARED=1 keeps /var/cache/apt/archives (mkrootfs.sh binds
# a cache shared between builds there).

set -eu

user=0
libs=
while [ $# -gt 0 ]; do
    case $1 in
        --sandbox-user) user=1; shift ;;
        --runner-deps) libs=$(sed -e 's/#.*//' "$2" | tr -s ' \t' '\n' \
                              | grep '^lib' || true); shift 2 ;;
        *) break ;;
    esac
done

pkgs=$( (cat "$@"; echo "$libs") | sed -e 's/#.*//' | tr -s ' \t\n' ' ')

export DEBIAN_FRONTEND=noninteractive
apt-get update
# shellcheck disable=SC2086
apt-get install -y --no-install-recommends $pkgs

if [ $user = 1 ]; then
    getent group 1000 >/dev/null || groupadd --gid 1000 sandbox
    getent passwd 1000 >/dev/null \
        || useradd --uid 1000 --gid 1000 --home-dir /workspace \
                   --no-create-home --shell /bin/bash sandbox
    mkdir -p /workspace /run/llmsafespace
    chown 1000:1000 /workspace
    chmod 0755 /workspace
    chmod 0700 /run/llmsafespace
fi

# What a sandbox never needs: documentation, apt's indexes and downloaded
# archives, logs of the build.
if [ "${LSS_APT_CACHE_SHARED:-0}" != 1 ]; then
    apt-get clean
fi
rm -rf /usr/share/doc/* /usr/share/man/* /usr/share/info/* \
       /usr/share/lintian /var/lib/apt/lists/* /var/cache/apt/*.bin \
       /var/cache/debconf/*-old /var/log/*
find /usr/share/locale -mindepth 1 -maxdepth 1 ! -name locale.alias \
     -exec rm -rf {} + 2>/dev/null || true

# Defence in depth: no_new_privs already makes set-id bits inert, but an
# image without them cannot be misused by a weaker configuration.
find / -xdev -type f -perm /6000 -exec chmod ug-s {} +
