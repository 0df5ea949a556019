"""Benchmarks: each measures the pipeline's code (speed, memory, the cost of a loss formulation, edit
quality, the GPU check) and returns its figures; `ctfgen bench ...` runs and prints them."""
