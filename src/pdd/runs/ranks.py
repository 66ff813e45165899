"""Which process this is under DDP, before a Lightning Trainer exists.

Launchers (torchrun, SLURM, LSF) set these variables; a plain process is global rank 0.
"""

from __future__ import annotations

import os

__all__ = ["is_global_zero_from_env"]


def is_global_zero_from_env() -> bool:
    """Whether this process is global rank 0 (the one that writes run and output folders)."""
    for name in ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if name in os.environ:
            return int(os.environ[name]) == 0
    return (
        int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", "0"))) == 0
        and int(os.environ.get("LOCAL_RANK", "0")) == 0
    )
