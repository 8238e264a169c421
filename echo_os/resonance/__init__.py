"""Resonance: the "Reflect" step. Scores every image, flags scenes that drifted, keeps the best of N,
records the user's ratings, and mines Echo Memory for recurring motifs (a style codebook).

    scorers.py   which scoring models this machine has (CLIP from models.toml, an optional aesthetic head)
    scores.py    the scores of a set of images: CLIP prompt alignment, character and style consistency, aesthetic
    persist.py   writing scores and ratings into meta.json (the source of truth) and the catalog row
    story.py     a story's reflection: drift flags, style consistency, best-of-N choice by a stated objective
    analyze.py   `echo-os memory analyze`: motifs by prompt (MiniLM) and by image (CLIP)
"""
