"""The procedural toy world: stand-ins for every data set, built with no download.

Modules, in data-flow order: `scene` (scene truth and seeding), `render`
(pixels), `language` (captions, labels, referring expressions), `qa`
(questions, answers, hypotheses), `datasets` (the table of stand-in data sets)
and `build` (`build_toy_world`, which writes them in the `dynpt.data.schema`
layout). See docs/data.md.
"""
