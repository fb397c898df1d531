"""MCP client side: long-lived, pooled sessions to backing servers in either protocol era, and their tool catalogs."""
