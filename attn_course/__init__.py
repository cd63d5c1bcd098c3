"""attn_course: self-attention from dot products to sparse, memory-efficient and GPU attention.

The functions the lessons build step by step, done properly: NumPy code that
runs unchanged on CuPy arrays (the array library comes from the inputs),
checked against torch. Importing the package never touches CUDA.
"""

from . import masks
from .additive import additive_attention
from .attention import scaled_dot_product_attention
from .backend import asarray, default_backend, get_namespace, gpu_available, to_numpy
from .softmax import softmax

__version__ = "0.1.0"

__all__ = [
    "additive_attention",
    "asarray",
    "default_backend",
    "get_namespace",
    "gpu_available",
    "masks",
    "scaled_dot_product_attention",
    "softmax",
    "to_numpy",
]
