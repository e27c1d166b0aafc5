"""The real engine: a Llama-family decoder on torch with a paged KV cache, run by the shared schedulers.

Import the submodules directly (``engine.runner``, ``engine.ops``); importing this
package itself does not import torch, so the simulator works without it.
"""
