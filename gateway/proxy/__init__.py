"""Forwarding to upstreams: path normalisation, header rules, streaming."""
