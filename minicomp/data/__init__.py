"""Data: the embedded synthetic world, LLaVA-format files, and native-resolution image processing."""
from .images import BadImage, load_image, to_rgb
from .llava import BadRecord, LlavaDataset
from .resize import budget_size, resize_fixed, resize_to_budget, to_tensor
from .synthetic import FAMILIES, Sample, SyntheticDataset, make_sample

__all__ = ["FAMILIES", "BadImage", "BadRecord", "LlavaDataset", "Sample", "SyntheticDataset", "load_image", "to_rgb", "budget_size", "make_sample", "resize_fixed",
           "resize_to_budget", "to_tensor"]
