"""attn_course: self-attention from dot products to sparse, memory-efficient and GPU attention.

The functions the lessons build step by step, done properly: NumPy code that
runs unchanged on CuPy arrays (the array library comes from the inputs),
checked against torch. Importing the package never touches CUDA and never
imports torch or matplotlib; ``attn_course.viz`` (pictures) and
``attn_course.check_env`` (is this machine ready?) are imported on demand.
"""

from . import masks
from .additive import additive_attention
from .attention import scaled_dot_product_attention
from .backend import asarray, default_backend, get_namespace, gpu_available, to_numpy
from .linear import linear_attention
from .multihead import MultiHeadAttention, merge_heads, split_heads
from .positions import apply_rope, sinusoidal_encoding
from .softmax import softmax
from .sparse import block_sparse_attention, sparse_attention
from .tiled import tiled_attention

__version__ = "0.1.0"

__all__ = [
    "MultiHeadAttention",
    "additive_attention",
    "apply_rope",
    "asarray",
    "block_sparse_attention",
    "default_backend",
    "get_namespace",
    "gpu_available",
    "linear_attention",
    "masks",
    "merge_heads",
    "scaled_dot_product_attention",
    "sinusoidal_encoding",
    "softmax",
    "sparse_attention",
    "split_heads",
    "tiled_attention",
    "to_numpy",
]
