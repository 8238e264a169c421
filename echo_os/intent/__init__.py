"""Intent -> Plan: `echo-os plan` turns an intent ("warm fractal, no human forms") into a plan the
existing commands render (a prompt list, or a storyboard CSV and a STORY_BIBLE.md skeleton).

- intent.py:     split the intent into the theme and the exclusions (which go to the negative prompt)
- vocabulary.py: the built-in wildcard vocabulary (subjects, palettes, compositions, lenses, lighting)
- offline.py:    candidates from Dynamic Prompts templates, N chosen far from each other and from past
                 work (MiniLM embeddings, maximal marginal relevance); no language model, no network
- llm.py:        the opt-in planner over any OpenAI-compatible chat endpoint, structured output
- planfile.py:   plan.json (intent, constraints, method, items) and the files written beside it
"""
