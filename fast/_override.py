"""An on/off override of a kernel family's own rules, for comparisons (tests, benchmarks)."""
from __future__ import annotations

import contextlib

__all__ = ["Override"]


class Override:
    """``value`` is None (the family's rules decide), or True or False inside :meth:`forced`.

    :mod:`fast.numba_pairs` and :mod:`fast.numba_tiles` each hold one, so that
    the tests and the scan benchmark can run a call with their kernels and
    without them.

    Examples
    --------
    >>> o = Override()
    >>> with o.forced(False):
    ...     o.value
    False
    >>> o.value is None
    True
    """

    def __init__(self):
        self.value = None

    @contextlib.contextmanager
    def forced(self, on):
        """Inside the ``with`` block ``value`` is ``bool(on)``, then what it was (not
        thread-safe: the override is one per process)."""
        before, self.value = self.value, bool(on)
        try:
            yield
        finally:
            self.value = before
