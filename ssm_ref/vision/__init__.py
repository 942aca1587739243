"""Vision: images as token sequences (scan orders), multi-direction scans, vision Mamba blocks.

Images are (B, H, W, C) channels last; token sequences (B, L, C) with L = H·W.
"""
from .scan_orders import *  # noqa: F401,F403
from .multi import *  # noqa: F401,F403
from .blocks import *  # noqa: F401,F403
from .models import *  # noqa: F401,F403
from .analysis import *  # noqa: F401,F403
