"""Bulwark's tests: one `test_<subject>.py` per subject, and the pieces they share."""
