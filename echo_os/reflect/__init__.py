"""Reflect -> vary (issue 28): learn a style from artifacts, the evolve loop, a project's version history,
the resonance report and suggestions.

These sit above echo_os.story, echo_os.iterate and echo_os.motion (they read story.json, refine and find the
animatic's input), while echo_os.resonance (scores, drift, best of N, analyze) sits below echo_os.story,
which calls it while a story renders; so they are their own package, not part of resonance.
"""
