"""A demo upstream and a one-command demo of the gateway in front of it."""
