"""The HTTP methods a route, an endpoint pattern or a CORS rule may name (RFC 9110 §9)."""

HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
