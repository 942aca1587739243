"""Vision: images as token sequences (scan orders), multi-direction scans, vision Mamba blocks.

Images are (B, H, W, C) channels last; token sequences (B, L, C) with L = H·W.

==================  ==========================================================================
module              what it holds
==================  ==========================================================================
scan_orders         the scan orders (permutations of the grid), their inverse, gather/scatter
multi               multi-direction schemes (cross-scan, omnidirectional, ...), a mixer's directions
plotting            a scan order drawn as a path over the grid
patch_embed         patch embedding, class token, position embedding
prenorm             x + mixer(norm(x)), the residual layer the blocks share
vim                 Vim's bidirectional mixer and block
vim_model           the full Vim model of hustvl/Vim (official names, checkpoints)
vmamba              VMamba's SS2D and VSS block, with the LocalMamba and ES2D variants
vmamba_model        the full VMamba v0 backbone (VSSM) of MzeroMiko/VMamba, release names
checkpoints         load_checkpoint: official .safetensors and .pth files as NumPy state dicts
official            the released models by name, their ImageNet eval transform, top-k
plainmamba          PlainMamba's snake mixer with direction-aware B, and its block
configs             the configurations of the tiny classifiers
classifier          the interface every tiny classifier shares (checks, pooled head)
tiny_mamba          the tiny Vim, VMamba and PlainMamba classifiers
baselines           the attention (ViT) and CNN baselines
models              the registry: MODELS and build_model
analysis            effective receptive fields and hidden-attention maps
survey_table        the survey's Table 2 (scan methods) and Table 15 (published numbers) as data
adaptive            content-adaptive and sparse scans (saliency, learned score, top-k)
==================  ==========================================================================

Every public name is re-exported here.
"""
from .scan_orders import *  # noqa: F401,F403
from .multi import *  # noqa: F401,F403
from .plotting import *  # noqa: F401,F403
from .patch_embed import *  # noqa: F401,F403
from .vim import *  # noqa: F401,F403
from .vim_model import *  # noqa: F401,F403
from .vmamba import *  # noqa: F401,F403
from .vmamba_model import *  # noqa: F401,F403
from .checkpoints import *  # noqa: F401,F403
from .official import *  # noqa: F401,F403
from .plainmamba import *  # noqa: F401,F403
from .configs import *  # noqa: F401,F403
from .tiny_mamba import *  # noqa: F401,F403
from .baselines import *  # noqa: F401,F403
from .models import *  # noqa: F401,F403
from .analysis import *  # noqa: F401,F403
from .survey_table import *  # noqa: F401,F403
from .adaptive import *  # noqa: F401,F403
