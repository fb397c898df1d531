"""The ASGI layers every request passes, outermost first: `RequestScope` (its id and timing), `FrontGuard`
(repeated headers, Host, Origin), then `virtual_mcp.inbound.middleware.Authenticate` (the caller, for the routes
that need one), then `McpEndpoints` (an MCP endpoint by its path, anything else through the router)."""
