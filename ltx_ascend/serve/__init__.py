"""The video service (`ltx-serve`): an OpenAI-compatible `/v1/videos` job API over resident pipelines.

It sits on top of `ltx_ascend.api` and nothing in the package imports it. `jobs` is the job store (SQLite
embedded, PostgreSQL for a fleet) that API processes and workers on any host share.
"""
