"""The gallery: a self-contained static HTML page over a workspace's artifacts (build.py)."""
