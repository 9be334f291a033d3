"""resbench: residual-network baselines on small-image benchmarks, reproduced from one command line."""

__version__ = "0.1.0"
