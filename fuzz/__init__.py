"""Fuzz harnesses for hostile inputs (wire frames, corrupted models); see fuzz/README.md."""
