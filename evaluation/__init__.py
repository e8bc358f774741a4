"""planforge.evaluation: perplexity and multiple-choice accuracy of a source or compiled model."""
