"""Checkpoint interop: public T5 v1.1 (Hugging Face, T5X) and BiT weights in, the text
tower out to Hugging Face or T5X.

  hf.py         Hugging Face T5 v1.1 folders (config.json + model.safetensors), numpy only;
  t5x.py        T5X checkpoint folders (msgpack `checkpoint` + tensorstore zarr arrays);
  bit.py        BiT ResNet .npz files (big_vision's layout, or the original BiT release);
  text_tower.py the T5 sizes and parameter shapes the readers check against;
  importer.py   a dynpt export (`dynpt.train.export` layout) from those checkpoints;
  exporter.py   an export's text tower written as Hugging Face or T5X.

Every reader checks names and shapes before anything is written and raises
`CheckpointMismatchError` naming the file and tensor.
"""
