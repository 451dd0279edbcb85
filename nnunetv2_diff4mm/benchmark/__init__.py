"""The benchmark behind `diff4mm_benchmark`: Diff4MMTrainer against two nnU-Net baselines on one dataset.

One module per job: ``common`` (settings, arms, presets, roots), ``derived`` (arm (a)'s reference-phase dataset),
``nnunet_runs`` (training and prediction via nnU-Net's commands), ``references`` (test labels), ``run`` (the whole
benchmark). Splits and labelled-fraction subsets live in ``nnunetv2_diff4mm.splits``. See ``run`` for the design.
"""
from ..splits import (base_splits, fraction_fold, fraction_subset, nnunet_default_splits,  # noqa: F401
                      prepare_splits)
from .common import *  # noqa: F401,F403
from .common import _case_ids, _link_or_copy  # noqa: F401
from .derived import *  # noqa: F401,F403
from .derived import _check_id_free  # noqa: F401
from .nnunet_runs import *  # noqa: F401,F403
from .references import *  # noqa: F401,F403
from .run import run_benchmark  # noqa: F401
