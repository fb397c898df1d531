"""virtual-mcp: an MCP gateway that serves many backing MCP servers behind one URL and one credential."""

__version__ = "0.1.0"
