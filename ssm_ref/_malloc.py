"""Keep freed memory in the process instead of handing it back to the OS (glibc only).

A training step of the NumPy models allocates and frees the same large
temporaries (megabytes to tens of megabytes) at every step.  By default
glibc's ``malloc`` returns such blocks to the kernel as soon as they are
freed (``munmap`` for blocks above its mmap threshold, trimming for the top of
the heap), so the next step faults every page back in and the kernel zeroes
it again.  On the 2-core virtual machine of the performance chapter that was
about a third of a VMamba step's time (measured as system time by
``fast.bench.train``).

Two ``mallopt`` settings keep the blocks: ``M_MMAP_MAX`` = 0 (every block
comes from the heap, none from its own ``mmap``, which ``free`` would unmap)
and ``M_TRIM_THRESHOLD`` = 2 GiB - 1 (the heap top is not trimmed).  Raising
only ``M_MMAP_THRESHOLD`` is not enough: glibc caps it at 32 MiB, and the
scan's (B, D, L, N) temporaries are larger.  Measured on that machine, one
training step: VMamba 32x32 with the Numba scan 782 -> 613 ms, Vim 32x32 with
the reference 1535 -> 1291 ms; page faults per step ~30 000 -> ~0 after the
first step.  The price is that memory freed after a peak stays with the
process, as with PyTorch's caching allocator.  The setting is process-wide, so the library never makes it
on import: :func:`ssm_ref.train.train` makes it when it starts (unless called with
``keep_freed_memory=False``), and so does ``ssm-ref train`` through it; the benchmarks
call :func:`keep_freed_memory` themselves; each records what it answered.  A training
loop of one's own can call it too (``from ssm_ref.train import keep_freed_memory``).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform

__all__: list[str] = []  # private module

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # from glibc's <malloc.h>
TRIM_THRESHOLD = 2**31 - 1  # the largest int mallopt takes


def keep_freed_memory():
    """Switch glibc's malloc to keeping freed memory; a line saying what was done.

    Returns ``"kept (mallopt: no mmap, no trimming)"`` when both
    settings were accepted, or why nothing was changed (another C library, or
    ``mallopt`` refused).  Calling it twice is harmless.

    Examples
    --------
    >>> keep_freed_memory().split()[0] in ("kept", "unchanged:")
    True
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return f"unchanged: not glibc ({platform.system()} {platform.libc_ver()[0] or '?'})"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = (libc.mallopt(_M_MMAP_MAX, 0) == 1
              and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
    except (OSError, AttributeError) as exc:
        return f"unchanged: mallopt not reachable ({exc})"
    if not ok:
        return "unchanged: mallopt refused the settings"
    return "kept (mallopt: no mmap, no trimming)"
