"""Vision: images as token sequences (scan orders), multi-direction scans, vision Mamba blocks.

Images are (B, H, W, C) channels last; token sequences (B, L, C) with L = H·W.
"""
from .scan_orders import *  # noqa: F401,F403
from .multi import *  # noqa: F401,F403
from .plotting import *  # noqa: F401,F403
from .patch_embed import *  # noqa: F401,F403
from .vim import *  # noqa: F401,F403
from .vmamba import *  # noqa: F401,F403
from .plainmamba import *  # noqa: F401,F403
from .configs import *  # noqa: F401,F403
from .tiny_mamba import *  # noqa: F401,F403
from .baselines import *  # noqa: F401,F403
from .models import *  # noqa: F401,F403
from .analysis import *  # noqa: F401,F403
