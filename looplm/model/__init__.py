"""The network and nothing else: RecursiveCausalLM, its blocks, CART-MLA, modulation and caches."""

from looplm.model.cache import ModelCache, kv_bytes_per_token
from looplm.model.recursive import ModelOutput, RecursiveCausalLM, flops_per_token, param_counts

__all__ = ["ModelCache", "ModelOutput", "RecursiveCausalLM", "flops_per_token", "kv_bytes_per_token", "param_counts"]
