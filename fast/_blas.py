"""BLAS called from inside parallel Numba kernels: one BLAS thread per call, and sums of
products.

``np.dot`` in a Numba kernel calls SciPy's BLAS (OpenBLAS in the wheels).  When
each of Numba's threads makes such a call while OpenBLAS may use all cores for
one product, the two pools of threads compete for the same cores: a (16384 x
24) by (24 x 96) product cut into two halves, one per Numba thread, took 8 ms
that way against 1.1 ms with OpenBLAS on one thread (2-core Xeon).  OpenBLAS
keeps products below its threshold on one thread anyway, so the harm comes with
size.  The kernels that call BLAS are therefore launched inside
:func:`one_blas_thread`, which sets every BLAS library loaded in the process to
one thread and restores what was set afterwards (``threadpoolctl``; about 10 us
a launch).  ``ssm-ref train`` and the benchmarks already run with one BLAS
thread (``--blas-threads``); a caller of the models' functions may not.

Numba's ``np.dot`` writes its product (no ``C = A B + C`` form), so a kernel that
sums products writes each into a scratch array and adds it with
:func:`add_into`: loops, where Numba's ``+=`` on a slice of a 3-D array (its
array expression) ran at about 1 ns an element, a fifth of the loops' speed
(64 slices of 48 x 17).
"""
from __future__ import annotations

import functools

from numba import njit

__all__: list[str] = []  # used by fast's modules; nothing is re-exported


@functools.cache
def _controller():
    """threadpoolctl's controller of the BLAS libraries, made once (it scans the loaded
    libraries), after SciPy's BLAS, which Numba's ``np.dot`` calls, has been loaded."""
    import scipy.linalg.cython_blas  # noqa: F401, PLC0415: loads the BLAS Numba calls
    from threadpoolctl import ThreadpoolController  # noqa: PLC0415
    return ThreadpoolController()


def one_blas_thread():
    """A context in which every BLAS library runs one thread per call (restored on exit).

    Examples
    --------
    >>> from threadpoolctl import threadpool_info
    >>> with one_blas_thread():
    ...     {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}
    {1}
    """
    return _controller().limit(limits=1, user_api="blas")


@njit(error_model="numpy", inline="always")
def add_into(out, a):
    """``out += a`` for 2-D arrays, in Numba-compiled code (see the module's docstring)."""
    for r in range(out.shape[0]):
        for c in range(out.shape[1]):
            out[r, c] += a[r, c]
