"""The pure core: rules, scoring, stages. No Kafka, no Faust, no clock, no I/O.

Given a lead's state, one event (or a batch of one lead's events) and the compiled rules,
it returns the new state and the outputs to emit. The stream shell, the backtest, the
tests and the benchmarks all drive this same code.
"""
