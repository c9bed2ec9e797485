"""Data: the embedded synthetic world, LLaVA-format files, and native-resolution image processing."""
from .collate import Batch, collate
from .images import BadImage, load_image, to_rgb
from .llava import BadRecord, LlavaDataset
from .processor import Processor, merged_tokens
from .resize import budget_size, resize_fixed, resize_to_budget, to_tensor
from .synthetic import FAMILIES, Sample, SyntheticDataset, make_sample
from .tokenize import IGNORE, IMAGE_TOKEN, ImageText, TooLong, encode_alignment_text, encode_conversation, encode_prompt

__all__ = ["FAMILIES", "IGNORE", "IMAGE_TOKEN", "ImageText", "encode_prompt", "Batch", "Processor", "TooLong", "collate", "encode_alignment_text",
           "encode_conversation", "merged_tokens", "BadImage", "BadRecord", "LlavaDataset", "Sample", "SyntheticDataset", "load_image", "to_rgb", "budget_size", "make_sample", "resize_fixed",
           "resize_to_budget", "to_tensor"]
