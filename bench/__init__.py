"""Benchmarks of maltrail-engine, one module per subject; see bench/README.md for how to run them."""
