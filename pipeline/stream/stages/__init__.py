"""The four stages of the stream as pure functions: ingest, stitch, score, assign.

Each takes a decoded batch, a read view of its table and the time (when it needs one), and
returns a frozen result with everything the shell does next: the records to send (topic,
key, value, partition), the table writes (one per key per batch) and what to count in the
metrics. No Faust, no Kafka, no clock: `stream.app` decodes, calls, sends, writes and
commits; tests and benchmarks call the same functions.
"""
