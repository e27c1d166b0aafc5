"""What servesim knows about models (``models``: shapes, parameters, KV bytes) and GPUs (``hardware``: datasheets, prices)."""
