/*
 * libllmsafespace-compat.so, preloaded in every sandbox's root filesystem
 * (/etc/ld.so.preload): statx(2) without AT_NO_AUTOMOUNT.
 *
 * Why: runsc 20221219 answers statx with AT_NO_AUTOMOUNT with EINVAL,
 * and coreutils (ls -l, stat, du) always passes it, so under gVisor
 * `ls -l /workspace` failed.  The flag only keeps a stat from triggering
 * an automount, and a sandbox has no automount points, so dropping it
 * changes nothing under runc.  No packaged library does this: the fix
 * belongs to gVisor (newer releases accept the flag).  Only programs
 * that call the C library's statx() are concerned; the library's own
 * stat() and fstatat() use other system calls.
 */

#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef AT_NO_AUTOMOUNT
#define AT_NO_AUTOMOUNT  0x800
#endif


int
statx(int dirfd, const char *path, int flags, unsigned int mask,
    struct statx *buf)
{
    return (int) syscall(SYS_statx, dirfd, path, flags & ~AT_NO_AUTOMOUNT,
                         mask, buf);
}
