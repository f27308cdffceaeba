"""What the gateway tells about its traffic: the access log and the Prometheus metrics."""
