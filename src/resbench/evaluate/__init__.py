"""Evaluation: accuracy and NLL of a split, calibration, corruptions, OOD detection and ensembles."""
