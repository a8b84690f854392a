"""The `/v1` plumbing every app's router uses: the NinjaAPI (`v1.py`), authentication, the error
shape, pagination, ids, wire formats, rate limits, the request middleware and the 501 routes."""
