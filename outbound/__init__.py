"""Outbound HTTP from the server to addresses users choose (webhook receivers, and the like)."""
