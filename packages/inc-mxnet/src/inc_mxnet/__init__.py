"""inc backend for MXNet."""
