"""Outbound plane: how the gateway authenticates to each backend. Never with the caller's gateway credential,
except through checked passthrough."""
