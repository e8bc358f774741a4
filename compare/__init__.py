"""planforge.compare: Polygraphy-based accuracy comparison of compiled and source models."""
