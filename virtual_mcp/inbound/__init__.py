"""Inbound plane: who is calling. Turns an HTTP request into a Principal, or refuses it."""
