"""Output quality: the object-expansion guard, candidate scoring and the evaluation of a finished run."""
