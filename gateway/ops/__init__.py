"""Operating the gateway: admin port, metrics, access log."""
