"""puka's version (a leaf module: anything may import it without importing the client)."""

__version__ = "0.1.0"
