"""Kafka plumbing: the local development broker (Maven Central jars, KRaft) and topic setup."""
