"""The service layer: every operation a face (the JSON API, the web UI, the CLI) offers,
with every rule that governs it, so that no face can skip one.

It knows no HTTP: a call takes an engine and the acting ``auth.User``, opens its own
transaction, enforces the rules (:mod:`.access`) and raises :mod:`jobbalancer.errors`
types, which each face turns into its own answer. See docs/web.md.
"""
