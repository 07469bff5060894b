"""Kafka client plumbing production code uses: security (TLS/SASL) and topic setup."""
