"""Self-signed CA and leaf certificates for TLS tests (flint.security.selfsigned)."""

from flint.security.selfsigned import make_ca, make_leaf, write_tls_files

__all__ = ["make_ca", "make_leaf", "write_tls_files"]
