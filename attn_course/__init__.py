"""attn_course: self-attention from dot products to sparse, memory-efficient and GPU attention.

The functions the lessons build step by step: each public module reads top to
bottom as its lesson's algorithm, in array-API code that runs unchanged on
NumPy, CuPy and torch arrays (the array library comes from the inputs), checked
against torch. For NumPy arrays the CPU fast paths in ``attn_course.fast`` take
over by one visible line; ``with attn_course.fast.disabled():`` (or
``ATTN_COURSE_FAST=0``) keeps the reference code. Importing the package never
touches CUDA and never imports torch or matplotlib; ``attn_course.viz``
(pictures), ``attn_course.measure`` (timing and memory), ``attn_course.grading``
(exercises) and ``attn_course.check_env`` (is this machine ready?) are imported
on demand.
"""

from . import fast, layouts, masks
from .additive import additive_attention
from .attention import scaled_dot_product_attention
from .backend import asarray, default_backend, get_namespace, gpu_available, to_numpy
from .backward import attention_backward, tiled_attention_backward
from .cache import KVCache
from .linear import linear_attention
from .multihead import MultiHeadAttention, merge_heads, split_heads
from .positions import alibi_bias, alibi_slopes, apply_rope, sinusoidal_encoding
from .softmax import softmax
from .sparse import block_sparse_attention, sparse_attention
from .tiled import tiled_attention

__version__ = "0.1.0"

__all__ = [
    "KVCache",
    "MultiHeadAttention",
    "additive_attention",
    "alibi_bias",
    "alibi_slopes",
    "apply_rope",
    "asarray",
    "attention_backward",
    "block_sparse_attention",
    "default_backend",
    "fast",
    "get_namespace",
    "gpu_available",
    "layouts",
    "linear_attention",
    "masks",
    "merge_heads",
    "scaled_dot_product_attention",
    "sinusoidal_encoding",
    "softmax",
    "sparse_attention",
    "split_heads",
    "tiled_attention",
    "tiled_attention_backward",
    "to_numpy",
]
