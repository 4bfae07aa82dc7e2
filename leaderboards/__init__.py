"""Committed result CSVs (written only by the harness) and the renderer: `python -m leaderboards.render`."""
