"""Data: the embedded synthetic world and native-resolution image processing."""
from .resize import budget_size, resize_fixed, resize_to_budget, to_tensor
from .synthetic import FAMILIES, Sample, SyntheticDataset, make_sample

__all__ = ["FAMILIES", "Sample", "SyntheticDataset", "budget_size", "make_sample", "resize_fixed",
           "resize_to_budget", "to_tensor"]
