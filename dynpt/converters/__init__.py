"""Real-data converters: each published raw format -> the `dynpt.data.schema` records.

Each split is converted by an Apache Beam pipeline (`engine.py`). Use
`tools/convert.py`, or from Python::

  conv = converters.get_converter("vqav2", converters.ConvertOptions(raw_dir="raw/vqa"))
  summary = converters.convert(conv, "val", out_dir="data/real")
"""

from dynpt.converters.base import ConvertOptions, Converter
from dynpt.converters.captions import CC3M, CC12M, LocalizedNarratives
from dynpt.converters.engine import DEFAULT_MAX_SKIP_FRACTION, convert, format_summary
from dynpt.converters.ids import image_id
from dynpt.converters.images import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_IMAGE_PIXELS
from dynpt.converters.labels import ImageNet21k, OpenImagesLabels, VisualGenome
from dynpt.converters.refcoco import RefCOCO, RefCOCOg, RefCOCOPlus
from dynpt.converters.skips import Skip, Skipped
from dynpt.converters.video import IVQA, MSRVTTQA, MSVDQA
from dynpt.converters.vqa import GQA, SNLIVE, VQAv2

CONVERTERS: dict[str, type[Converter]] = {
    c.name: c for c in (CC3M, CC12M, LocalizedNarratives, OpenImagesLabels, ImageNet21k,
                        VisualGenome, VQAv2, GQA, SNLIVE, RefCOCO, RefCOCOPlus, RefCOCOg,
                        MSRVTTQA, MSVDQA, IVQA)
}


def get_converter(name: str, options: ConvertOptions) -> Converter:
  """Returns the converter of data set `name` reading from `options.raw_dir`."""
  if name not in CONVERTERS:
    raise ValueError(f"unknown dataset {name!r}; choose from {sorted(CONVERTERS)}")
  return CONVERTERS[name](options)
