"""The MCP server side: endpoints, tool views and routing, forwarding, and the ASGI application."""
