"""The benchmark harness: `python -m benchmarks.run` and one module per bench."""
