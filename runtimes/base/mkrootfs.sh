#!/bin/sh
# Builds the root filesystem of one runtime for the local (runc / runsc)
# driver: build/rootfs/<name>/.
#
#   mkrootfs.sh NAME RECIPE_DIR OUT_DIR RUNNER_BUILD_DIR [RUNNER_DEPS_FILE]
#
# RECIPE_DIR/packages.txt lists the runtime's Debian packages; the runner's
# own shared libraries come from RUNNER_DEPS_FILE (runtimes/runner/
# RUNTIME_DEPS) or, until that file exists, from the list below.
#
# Why a cache keyed by a hash: debootstrap takes about a minute, copying
# the runner takes milliseconds.  The expensive part (debootstrap, user,
# stripping) is a pure function of the package list, this script and the
# mirror, so its result is kept next to a stamp holding that key and is
# rebuilt only when the key changes.  The runner binary is compared and
# replaced on every run.
#
# Why build in a temporary directory and rename: two builds (two make
# invocations, CI retries) may run at once; a reader must see either the
# old complete tree or the new complete tree, never a half-built one.

set -eu

name=$1
recipe=$2
out=$3
runner_dir=$4
runner_deps=${5:-}
here=$(cd "$(dirname "$0")" && pwd)

# The mirror this machine's apt uses (see /etc/apt/sources.list.d); the
# same archive, so what the tests run is what apt installs here.
mirror=${LSS_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=${LSS_DEBIAN_SUITE:-bookworm}
default_runner_deps="libmicrohttpd12 libwslay1 libjansson4 libseccomp2
libpython3.11 libssl3"

if [ "$(id -u)" != 0 ]; then
    echo "mkrootfs: debootstrap needs root" >&2
    exit 1
fi

mounted=
tmp=

# Never remove a tree with the package cache still bound inside it.
cleanup() {
    if [ -n "$mounted" ]; then
        umount "$mounted" || umount -l "$mounted" || exit 1
    fi
    if [ -n "$tmp" ]; then
        rm -rf "$tmp" "$tmp.log"
    fi
}

# Quiet unless it fails: then the end of the log says why.
run() {
    "$@" >>"$tmp.log" 2>&1 || { tail -25 "$tmp.log" >&2; exit 1; }
}

strip_comments() {
    sed -e 's/#.*//' "$@" | tr -s ' \t\n' '\n' | grep -v '^$' || true
}

pkgs=$(strip_comments "$recipe/packages.txt")
# The runner's lib* entries only (see install.sh); for the cache key.
if [ -n "$runner_deps" ] && [ -f "$runner_deps" ]; then
    rdeps=$(strip_comments "$runner_deps" | grep '^lib' || true)
else
    rdeps=$(echo "$default_runner_deps" | tr -s ' \n' '\n')
fi
all=$(printf '%s\n%s\n' "$pkgs" "$rdeps" | grep -v '^$' | sort -u)
shown=$(echo "$all" | tr "\n" " ")

key=$( (echo "$mirror $suite"; echo "$all"; cat "$0" "$here/install.sh") \
       | sha256sum | cut -c1-16)

root=$out/$name
stamp=$out/$name.key
mkdir -p "$out"

if [ -d "$root" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ]; then
    echo "mkrootfs: $name: cached ($key)"
else
    echo "mkrootfs: $name: debootstrap $suite ($key): $shown"
    tmp=$out/.tmp.$name.$$
    debs=$(realpath "$out")/.debs
    rm -rf "$tmp"
    mkdir -p "$debs" "$tmp"
    trap 'cleanup' EXIT INT TERM

    # debootstrap lays down minbase only; install.sh, run by apt inside
    # the new tree, does the rest exactly as the Dockerfiles do.
    # debootstrap's own resolver does not follow virtual packages
    # (Provides), which npm's dependencies need; apt does.
    run debootstrap --variant=minbase --cache-dir="$debs" "$suite" "$tmp" \
        "$mirror"
    mkdir -p "$tmp/var/cache/apt/archives" "$tmp/tmp/lss"
    echo "$rdeps" >"$tmp/tmp/lss/runner-deps.txt"
    cp "$here/install.sh" "$recipe/packages.txt" "$tmp/tmp/lss/"
    mount --bind "$debs" "$tmp/var/cache/apt/archives"
    mounted=$tmp/var/cache/apt/archives
    # apt refuses, rather than waits, when another build holds the shared
    # cache's lock: builds take turns here instead.
    run flock "$debs/.lock" chroot "$tmp" env LSS_APT_CACHE_SHARED=1 \
        sh /tmp/lss/install.sh --sandbox-user \
        --runner-deps /tmp/lss/runner-deps.txt /tmp/lss/packages.txt
    umount "$mounted"
    mounted=
    rm -rf "$tmp/tmp/lss" "$tmp"/var/cache/apt/archives/*.deb \
        "$tmp/debootstrap" "$tmp.log"

    # No network by default; an explicit empty resolver configuration
    # makes name lookups fail fast instead of trying the host's.
    : >"$tmp/etc/resolv.conf"
    printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost\n' >"$tmp/etc/hosts"
    echo sandbox >"$tmp/etc/hostname"

    if [ -d "$root" ]; then
        mv -T "$root" "$out/.old.$name.$$" 2>/dev/null || true
    fi
    # -T: never move the new tree *into* one a concurrent build has just
    # put in place; that build made the same tree, so ours is dropped.
    if mv -T "$tmp" "$root" 2>/dev/null; then
        tmp=
        echo "$key" >"$stamp.$$"
        mv -T "$stamp.$$" "$stamp"
    fi
    rm -rf "$out/.old.$name.$$"
    cleanup
    trap - EXIT INT TERM
fi

# The runner and its zygote: replaced whenever the built binaries differ,
# again through a rename so a container starting now sees whole files.
installed=0
for bin in llmsafespace-runner llmsafespace-zygote; do
    src=$runner_dir/$bin
    dst=$root/usr/local/bin/$bin
    if [ ! -f "$src" ]; then
        echo "mkrootfs: $name: no $src (not installed)" >&2
        continue
    fi
    installed=1
    if ! cmp -s "$src" "$dst"; then
        mkdir -p "$(dirname "$dst")"
        cp "$src" "$dst.new.$$"
        chmod 0755 "$dst.new.$$"
        mv "$dst.new.$$" "$dst"
        echo "mkrootfs: $name: $bin installed"
    fi
done

# statx without AT_NO_AUTOMOUNT for every program, as the image does
# (runtimes/runner/src/lss_compat_statx.c says why)
compat=$runner_dir/libllmsafespace-compat.so
lib=/usr/local/lib/libllmsafespace-compat.so
if [ -f "$compat" ] && ! cmp -s "$compat" "$root$lib"; then
    mkdir -p "$root/usr/local/lib"
    cp "$compat" "$root$lib.new.$$"
    chmod 0644 "$root$lib.new.$$"
    mv "$root$lib.new.$$" "$root$lib"
    echo "mkrootfs: $name: libllmsafespace-compat.so installed"
fi
if [ -f "$root$lib" ] && [ "$(cat "$root/etc/ld.so.preload" 2>/dev/null)" \
        != "$lib" ]; then
    echo "$lib" >"$root/etc/ld.so.preload"
fi

# A library the runner links but the package lists miss would only show
# as a container that never becomes ready; say it here instead.
if [ $installed = 1 ]; then
    missing=$(chroot "$root" ldd /usr/local/bin/llmsafespace-runner \
              /usr/local/bin/llmsafespace-zygote 2>&1 | grep 'not found' \
              || true)
    if [ -n "$missing" ]; then
        echo "mkrootfs: $name: runner libraries missing from the rootfs" \
             "(add their packages to runtimes/runner/RUNTIME_DEPS):" >&2
        echo "$missing" >&2
        exit 1
    fi
fi
