"""ssm_ref: a readable NumPy + SciPy reference for state-space models and Mamba.

From the continuous SSM to the vision blocks, one concept per module:

==================  ===========================================================
module              what it derives (book chapter)
==================  ===========================================================
continuous          x'(t) = A x + B u, y = C x + D u: responses, stability, H(s)  (ch. 1)
discretize          ZOH, bilinear, Euler, backward Euler, Mamba's ZOH-A/Euler-B  (ch. 2)
initializers        HiPPO-LegS and its NPLR form, S4D-Lin/Inv/Real, Mamba A_log  (ch. 3)
lti                 recurrence, convolution kernel (naive/Vandermonde), FFT conv  (ch. 3)
selective           Mamba's selective scan (S6), its backward, the decoding step  (ch. 4)
attention           the hidden-attention matrix of a selective SSM                (ch. 4)
scans               sequential, Hillis-Steele, Blelloch, chunked, log-space scans (ch. 5)
nn                  layers with hand-derived backward passes (linear, conv1d, norms) (ch. 7)
module              the one Module base: parameters by state-dict name, submodules   (ch. 7)
mamba               the Mamba block with official weights names and step mode     (ch. 7)
fused               the block's inner function with the official signature        (ch. 7, 11)
lm                  a Mamba language model that reads real checkpoints            (ch. 7)
regularize          state dropout in the scan, weight normalisation (survey §6.1) (ch. 13)
vision              scan orders, multi-direction scans, vision Mamba blocks       (ch. 8-9)
==================  ===========================================================

Every public name is re-exported here; each module lists its own in ``__all__``.
"""
from .continuous import *  # noqa: F401,F403
from .discretize import *  # noqa: F401,F403
from .initializers import *  # noqa: F401,F403
from .lti import *  # noqa: F401,F403
from .selective import *  # noqa: F401,F403
from .attention import *  # noqa: F401,F403
from .scans import *  # noqa: F401,F403
from .nn import *  # noqa: F401,F403
from .module import *  # noqa: F401,F403
from .mamba import *  # noqa: F401,F403
from .fused import *  # noqa: F401,F403
from .lm import *  # noqa: F401,F403
from .regularize import *  # noqa: F401,F403
from . import vision  # noqa: F401

__version__ = "0.1.0"
