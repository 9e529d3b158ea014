"""Downstream work on what pretraining made: finetuning, evaluation and probes.

Every module starts from the run's `dynpt.train.model_setup.RunModel` (vocabulary,
model, mesh, rules), so each evaluation places params and traces under the same
mesh and rules as the train step:

* `finetune`: the finetuning driver (the train loop plus an evaluation hook);
* `best_params`: keeps the best params of a finetuning run by its metric;
* `decode_score`: decode a downstream split and score it with the task's metric
  (the example to copy for a new generation-based evaluation);
* `teacher_forced`: per-task loss and token accuracy of a run (`--mode=eval`);
* `grounding`: answer accuracy with true against shuffled images;
* `captioner`: a captioner built from an export (`tools/generate_captions.py`);
* `answer_vocab`: the standard answer vocabulary of a QA data set.
"""
