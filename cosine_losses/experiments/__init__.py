"""Experiments on top of the library: `compare` (losses side by side, seeds, open-set scores), `sweep` (optuna searches of the margins)
and `report` (the paper's Table 1 beside ours)."""
