"""qmail in Python: one module per qmail program; shared helpers in qmail.lib."""
