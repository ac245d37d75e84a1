"""Easy Mode Gateway: project tables over HTTP, with PostgreSQL as the only shared state."""

__version__ = "0.1.0"
