"""One module per CLI verb; see r1mega/cli.py."""
