"""Captioning metrics (CIDEr, BLEU-4) through the COCO caption evaluation toolkit.

Captioning is one of the pretraining tasks; scoring its generations shows how well
the captioners learn. We use `pycocoevalcap` (the reference implementation behind
published COCO numbers) instead of re-implementing CIDEr-D and BLEU: its PTB
tokenizer runs a bundled Java jar (Java 8+ must be on PATH), with no network use.
The package is optional and imported only when this function is called.
"""

from __future__ import annotations

from typing import Sequence

_INSTALL_HINT = ("caption_metrics needs the optional package pycocoevalcap (and Java for its "
                 "PTB tokenizer): pip install pycocoevalcap")


def _as_str(text: str | bytes) -> str:
  return text.decode("utf-8") if isinstance(text, bytes) else text


def caption_metrics(predictions: Sequence[str | bytes],
                    references: Sequence[Sequence[str | bytes]]) -> dict[str, float]:
  """Corpus CIDEr (CIDEr-D) and BLEU-4 of generated captions, COCO-style.

  Args:
    predictions: one generated caption per image.
    references: the reference captions of each image (one or more).

  Returns:
    ``{"cider": ..., "bleu4": ...}`` on the toolkit's scale (CIDEr is usually
    reported x100, BLEU in [0, 1]).

  Raises:
    ImportError: pycocoevalcap is not installed (the message says how to install).
    ValueError: lengths differ, the corpus is empty, or an image has no reference.
  """
  try:
    # pylint: disable=g-import-not-at-top
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
  except ImportError as e:
    raise ImportError(_INSTALL_HINT) from e
  if len(predictions) != len(references):
    raise ValueError(f"caption_metrics: {len(predictions)} predictions but "
                     f"{len(references)} reference lists")
  if not predictions:
    raise ValueError("caption_metrics: no captions to score")
  gts, res = {}, {}
  for i, (pred, refs) in enumerate(zip(predictions, references)):
    if isinstance(refs, (str, bytes)) or not list(refs):
      raise ValueError(f"caption_metrics: references[{i}] must be a non-empty list of captions")
    gts[i] = [{"caption": _as_str(r)} for r in refs]
    res[i] = [{"caption": _as_str(pred)}]
  tokenizer = PTBTokenizer()
  gts_tok, res_tok = tokenizer.tokenize(gts), tokenizer.tokenize(res)
  bleu, _ = Bleu(4).compute_score(gts_tok, res_tok, verbose=0)
  cider, _ = Cider().compute_score(gts_tok, res_tok)
  return {"cider": float(cider), "bleu4": float(bleu[3])}
