"""One lock for every ``parallel=True`` Numba launch of ``fast``: safe from several threads.

Numba's ``workqueue`` threading layer (the one Numba falls back to when neither
TBB nor OpenMP is installed) is not thread-safe: two parallel launches at the
same time, from two Python threads, abort the process ("Concurrent access has
been detected").  Every parallel kernel of the package (the scan kernels of
:mod:`fast.numba_cpu`, :func:`fast._fastexp.exp_array`, the benchmark kernels of
:mod:`fast.bench.scan`) is therefore launched through :func:`launch`, which
serialises the launches with one process-wide lock while the layer is
``workqueue``.  The layer is known only after the first parallel launch
(``numba.threading_layer()`` raises before), so launches are serialised until
then and, under ``omp`` or ``tbb`` (both thread-safe), never again.

One lock for all of them: a scan and an ``exp_array`` launched at once from two
threads would abort just as two scans would.  Kernels without ``parallel=True``
need no lock.
"""
from __future__ import annotations

import threading

import numba

__all__: list[str] = []  # used by fast's modules; nothing is re-exported

#: held around each parallel launch while the threading layer is not known
#: to be thread-safe
LAUNCH_LOCK = threading.Lock()

#: the threading layers that take concurrent launches (Numba's documentation,
#: "The Threading Layers"); "workqueue" does not
THREADSAFE_LAYERS = frozenset({"tbb", "omp"})

#: None until the first parallel launch; then whether the layer Numba chose
#: is thread-safe (the layer is chosen once per process, at that launch)
layer_threadsafe = None


def launch(kernel, *args):
    """``kernel(*args)`` for a ``parallel=True`` kernel, safe from several threads.

    Serialised by :data:`LAUNCH_LOCK` until the first launch has shown which
    threading layer Numba runs, and afterwards only if that layer is not
    thread-safe (``workqueue``).

    Examples
    --------
    >>> import numpy as np
    >>> from numba import njit, prange
    >>> @njit(parallel=True)
    ... def double(x, out):
    ...     for i in prange(x.size):
    ...         out[i] = 2 * x[i]
    >>> out = np.empty(3)
    >>> launch(double, np.arange(3.0), out); out
    array([0., 2., 4.])
    """
    global layer_threadsafe
    if layer_threadsafe:
        return kernel(*args)
    with LAUNCH_LOCK:
        result = kernel(*args)
        layer_threadsafe = numba.threading_layer() in THREADSAFE_LAYERS
    return result
