"""The KV cache: paged blocks (block_manager), prefix caching (prefix_cache, its key_index, the prefix_keys of
requests) and memory planning (memory: how many blocks a deployment holds). Shared by simulator and engine."""
