"""Fixtures that start real Valkey, Ray and gRPC servers (filled in by the serving work)."""
