"""The web admin console and ``GET /metrics`` (docs/admin-console.md)."""
