"""fast.bench: the benchmarks, installed with the package.

==========  ==============================================================
module      what it measures
==========  ==============================================================
scan        the selective scan: reference, Numba CPU (and CUDA on a real
            GPU) against the machine's limit; scan against attention
train       one training step of the tiny vision models per scan backend,
            against a null-scan floor
gpu_check   ``make gpu-check``: the real-GPU tests, the GPU rows of scan and
            train, and a short training run on the GPU, in one command
==========  ==============================================================

Each module has ``main(argv=None, prog=None)`` and runs as
``python -m fast.bench.scan`` or ``ssm-ref bench --suite scan``; results go to
``--out``, by default ``benchmarks/results`` under the current directory (the
committed results when run from the repository's root).  Importing this
package imports nothing else.
"""

#: ``ssm-ref bench --suite NAME``: the module of each suite
SUITES = {"scan": "fast.bench.scan", "train": "fast.bench.train"}

__all__ = ["SUITES"]
