"""servesim's version, in a module of its own so that any module can name it without importing ``sim``'s API."""

__version__ = "0.1.0"
