"""Data sets as real MW samples on the sphere, each built once and kept in sphc's disk cache."""
