"""Applications built on the compiler and runtime: the command line, training, tuning, plots, equivariance checks."""
