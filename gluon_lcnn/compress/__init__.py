"""Accelerate a trained dense net: LCNN fine-tune, low-rank decomposition, magnitude pruning."""
