"""Small helpers shared by the qmail programs, one job per module."""
