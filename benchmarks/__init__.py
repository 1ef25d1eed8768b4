"""The Gatepass benchmark: `make bench` (= `python -m benchmarks.run`); see docs/benchmarks.md."""
