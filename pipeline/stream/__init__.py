"""The Faust shell: topics, tables, agents, timers and web views around the pure core."""
