"""leadflow: event-streaming lead scoring and routing on Kafka."""

__version__ = "0.1.0"
