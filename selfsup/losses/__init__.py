"""Losses as pure functions: tensors in, a scalar tensor out.

Each docstring states the paper's formula; the tests check each against a direct, loop-by-loop
transcription of that formula on fixed inputs. Every loss computes in float32, even when its
inputs come from a bf16 autocast region, because exp/log of low-precision logits is where
mixed-precision training turns to NaN. One module per family; all are re-exported here, so
``selfsup.losses.<name>`` is the public name of every loss.
"""

from .clustering import *  # noqa: F401,F403  (SwAV: sinkhorn, swapped prediction)
from .contrastive import *  # noqa: F401,F403  (SimCLR, MoCo: nt_xent, info_nce)
from .cpc import *  # noqa: F401,F403  (CPC)
from .distillation import *  # noqa: F401,F403  (DINO)
from .nce import *  # noqa: F401,F403  (InstDisc, CMC: memory-bank NCE)
from .reconstruction import *  # noqa: F401,F403  (MAE)
from .redundancy import *  # noqa: F401,F403  (Barlow Twins, VICReg)
from .regression import *  # noqa: F401,F403  (BYOL, SimSiam)
