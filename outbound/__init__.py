"""Outbound connections Galley makes on a user's behalf (web_fetch, MCP, OAuth, webhooks, egress)."""
