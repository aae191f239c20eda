"""Security of the public gRPC port: API keys per tenant, tenant binding, rate limits, TLS, limits."""
