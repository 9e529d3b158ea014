"""The pretraining-mixture study (issues 20-21): grid, cells, results, statistics, report.

The top layer: it runs `dynpt.main`'s modes, and nothing in dynpt imports it.
`tools/study.py` is its command line (`command` what it runs); docs/study.md
describes it. Beside the study: the transfer check (`transfer`, on the study's
store and provenance; `tools/transfer_check.py`) and the image tower's probe
(`shape_probe`, `tools/shape_probe.py`), docs/study/transfer.md.
"""
