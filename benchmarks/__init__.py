"""The FedMix benchmark (not part of the package): see benchmarks/README.md."""
