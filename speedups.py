"""speedups.py: the low-level speed pieces that train_gpt.py plugs in behind its switches.

Each piece sits beside the plain PyTorch reference that the tests compare it with; train_gpt.py stays the one
script a speedrunner reads and edits, and imports from here only what a switch turns on.
"""

import torch

# -----------------------------------------------------------------------------
# FP8 matmuls


# -----------------------------------------------------------------------------
# Fused soft-capped cross-entropy


# -----------------------------------------------------------------------------
# Communication
