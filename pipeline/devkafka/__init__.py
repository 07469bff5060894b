"""Development Kafka: a real local broker, a multi-node test cluster and a SASL_SSL test listener.

Used by `leadflow kafka`, `leadflow demo`, `leadflow bench`, the benchmarks and the tests; never
by the production worker, collector or clients (``pipeline.kafka`` is what those use).
"""
