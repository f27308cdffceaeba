"""Connections to the key store: a Redis URL, or the embedded server under ``redis.data_dir``."""
