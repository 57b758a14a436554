"""glibc's malloc on transparent huge pages for `python -m dream_jax.main`.

XLA:CPU's compute threads allocate a step's buffers from glibc's per-thread malloc heaps, which grow and shrink on
4 KiB pages every step (tens of thousands of page faults a step for the tiny default). With the tunable
glibc.malloc.hugetlb=1 malloc madvises its memory for transparent huge pages instead, and the tiny train step on
CPU runs 1.3-1.6x faster (docs/BENCHMARKS.md, "Huge pages"). glibc reads its tunables only when a process starts,
so the entry point restarts itself once with the tunable: the same PID and command line, before jax is imported
or anything runs. A GLIBC_TUNABLES that names glibc.malloc.hugetlb already is left as it is (=0 opts out), and so is
another C library or a glibc older than 2.35, which has no such tunable.
"""

import os
import sys

TUNABLE = "glibc.malloc.hugetlb"
MIN_GLIBC = (2, 35)


def glibc_version():
    """(major, minor) of the C library this process runs on if it is glibc, else None."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
    except (AttributeError, ValueError, OSError):  # no confstr, an unknown name, or not "glibc X.Y"
        return None
    return tuple(int(v) for v in version.split(".")[:2]) if name == "glibc" else None


def environment(environ, glibc):
    """`environ` with TUNABLE=1 added to GLIBC_TUNABLES, or None when there is nothing to add (`glibc`: the
    version from glibc_version())."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    if glibc is None or glibc < MIN_GLIBC or TUNABLE in tunables:
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, (tunables, f"{TUNABLE}=1")))}


def restart_with_huge_pages():
    """Replaces this process by its own command line (sys.orig_argv: interpreter options and `-m` included) with
    the tunable set, when environment() has it to add; returns otherwise."""
    env = environment(os.environ, glibc_version())
    if env is not None and sys.executable:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
