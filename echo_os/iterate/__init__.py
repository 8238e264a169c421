"""Features that iterate on finished work, each a thin host over the render core: replay (render an
artifact's request again and compare pixels), refine (img2img from an artifact, with lineage) and compare
(an X/Y/Z grid of requests)."""
