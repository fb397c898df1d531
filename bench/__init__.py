"""Benchmarks of virtual-mcp against fastmcp proxies; run `python -m bench.run` (see bench/README.md)."""
