"""Data: the shipped benchmark sets, user training-data formats, and pairwise battles."""
