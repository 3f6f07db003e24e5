"""The engine the eight pipelines run on: stages, samplers, the DiT runner, the step cache, the
parallel layouts, the model stack and its artifact lookups, and the resident `Engine`
(`resident.py`) that keeps them loaded between requests."""
