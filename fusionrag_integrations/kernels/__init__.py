"""Attention kernels for selective recompute: Triton fast paths beside PyTorch references."""

from .sparse_attention import sparse_query_attention, sparse_query_attention_ref

__all__ = ["sparse_query_attention", "sparse_query_attention_ref"]
