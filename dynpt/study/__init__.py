"""The pretraining-mixture study (issues 20-21): grid, cells, results, statistics, report.

The top layer: it runs `dynpt.main`'s modes, and nothing in dynpt imports it.
`tools/study.py` is its command line; docs/study.md describes it.
"""
