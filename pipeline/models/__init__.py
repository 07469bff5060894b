"""Wire formats: inbound Segment messages and the outbound messages leadflow emits."""
