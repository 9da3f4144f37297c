"""Evaluation: stream benchmark videos through ``InferenceSession``, write results, score, time."""
