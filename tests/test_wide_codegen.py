"""The kernels' code generator: 512-bit vectors on every AVX-512 CPU, Numba's defaults elsewhere.

``fast.numba_cpu._NoAliasDispatcher`` compiles the kernels with a code generator of its
own (``_WideCodegen``: LLVM's "prefer-256-bit" tuning of Intel's AVX-512 cores lifted) and
hands Numba's shared target context its own generator back afterwards.  Checked here: the
rule on the features, that a kernel's vectorized loop runs in 512-bit registers on this
machine where it has AVX-512 (an Intel core compiled 256-bit pairs before), that code
compiled by Numba's own dispatcher keeps Numba's generator, also after a kernel failed to
compile, and that the kernels' numbers do not depend on the generator (the results of the
whole test suite are the other half of that).
"""
from __future__ import annotations

import numba
import numpy as np
import pytest
from numba.core.registry import cpu_target

from fast import numba_cpu

#: the features Numba compiles for (the host's, or NUMBA_CPU_FEATURES where that is set)
FEATURES = cpu_target.target_context.codegen()._tm_features.split(",")
AVX512 = "+avx512f" in FEATURES


def _axpy_kernel():
    """A fresh (uncached) kernel with one loop for LLVM to vectorize."""
    @numba_cpu._njit_noalias(fastmath=numba_cpu._FMK, error_model="numpy")
    def axpy(a, x, y):
        for i in range(x.size):
            y[i] = a * x[i] + y[i]
    return axpy


def _args():
    x = np.arange(64, dtype=np.float32)
    return np.float32(0.5), x, np.ones(64, np.float32)


def test_the_feature_rule():
    """'-prefer-256-bit' is added exactly where the features name AVX-512."""
    wide = numba_cpu._wide_codegen()
    features = wide._tm_features.split(",")
    assert ("-prefer-256-bit" in features) == AVX512
    own = cpu_target.target_context.codegen()._tm_features.split(",")
    assert "-prefer-256-bit" not in own
    assert [f for f in features if f != "-prefer-256-bit"] == own


def test_a_kernel_compiles_with_the_wide_generator_and_gives_it_back():
    before = cpu_target.target_context.codegen()
    axpy = _axpy_kernel()
    a, x, y = _args()
    axpy(a, x, y)
    np.testing.assert_array_equal(y, 1 + 0.5 * x)  # a*x + y, exact for these values
    library = axpy.overloads[axpy.signatures[0]].library
    assert library.codegen is numba_cpu._wide_codegen()
    assert cpu_target.target_context.codegen() is before  # Numba's own, again

    @numba.njit
    def plain(a, x, y):
        for i in range(x.size):
            y[i] = a * x[i] + y[i]
    plain(a, x, np.ones(64, np.float32))
    assert plain.overloads[plain.signatures[0]].library.codegen is before


def test_a_failed_compilation_gives_the_generator_back():
    before = cpu_target.target_context.codegen()

    @numba_cpu._njit_noalias()
    def broken(x):
        return x.no_such_attribute

    with pytest.raises(numba.core.errors.TypingError):
        broken(np.zeros(3))
    assert cpu_target.target_context.codegen() is before


@pytest.mark.skipif(not AVX512, reason="this CPU has no AVX-512: its widest vectors are "
                    "256-bit, and there is no preference to lift")
def test_the_kernels_loops_use_512_bit_registers_where_the_cpu_has_them():
    axpy = _axpy_kernel()
    axpy(*_args())
    asm = axpy.inspect_asm(axpy.signatures[0])
    assert "zmm" in asm  # 16 float32 lanes per register; "ymm" pairs without the change
