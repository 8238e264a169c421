"""Intent -> Plan: `echo-os plan` turns an intent ("warm fractal, no human forms") into a plan the
existing commands render (a prompt list, or a storyboard CSV and a STORY_BIBLE.md skeleton).

- intent.py:     split the intent into the theme and the exclusions (which go to the negative prompt)
- vocabulary.py: the built-in wildcard vocabulary of --template (subjects, palettes, compositions, ...)
- subjects.py:   the subject vocabulary by domain (nouns, attribute axes), palettes, lighting, framings
- relevance.py:  the vocabulary embedded once (MiniLM, cached on disk), on-topic subjects, widened exclusions
- offline.py:    candidates from the on-topic subjects (or a --template), N chosen by maximal marginal
                 relevance against the intent, each other and past work; no language model, no network
- storyplan.py:  --kind story: scenes in one place with one cast, as an arc
- tasks.py:      --kind assets/tasks: concept -> texture -> turnaround tasks, and how batch runs them
- llm.py:        the opt-in planner over any OpenAI-compatible chat endpoint, structured output
- planfile.py:   plan.json (intent, constraints, method, items) and the files written beside it
"""
