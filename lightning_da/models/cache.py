"""The keyword a KV cache is passed by. transformers 5.24 renamed `past_key_values` to `cache` (the old
name warns, and goes in 5.40); the `vllm` extra pins transformers below 5.21, which knows only the old one."""

from __future__ import annotations

import transformers
from packaging.version import Version

CACHE_KEYWORD = "cache" if Version(transformers.__version__) >= Version("5.24.0") else "past_key_values"


def with_cache(cache) -> dict:
    """`{keyword: cache}` for a forward or `generate` of the installed transformers."""
    return {CACHE_KEYWORD: cache}
