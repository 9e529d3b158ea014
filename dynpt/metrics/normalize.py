"""Answer normalisation of the official VQA evaluation, shared by every QA metric.

The model generates open-ended text, so a prediction is only comparable to the
ground truth after both are put in one canonical form. We follow the VQA v2
evaluation script (`vqaEval.py`, `processPunctuation` + `processDigitArticle`):

1. newlines and tabs become spaces, the text is stripped;
2. punctuation: each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is deleted
   when it touches a space (``"hello, world"``) or when the text holds a digit
   group comma (``"1,000"``), otherwise replaced by a space (``"red/white"``);
   a period is deleted unless a digit follows it (``"3.5"`` is kept);
3. lower case; number words ``none, zero .. ten`` become digits; the articles
   ``a, an, the`` are dropped; contractions written without their apostrophes
   (``dont``) get them back (``don't``).

Deliberate differences from the script, each to make the normalisation one
function applied to both sides:
- the script normalises only the prediction fully (ground truth gets step 2 only
  and only when the annotators disagree); we normalise both sides the same way.
  The VQA v2 annotations are already in canonical form, so scores on real data
  are unchanged, while data from other sources (the toy world, other datasets)
  is compared fairly;
- contraction keys are lower case (the script's ``Im``, ``Ive`` can never match
  its lower-cased words) and every spelling with some apostrophes dropped maps to
  the canonical one, with ASCII apostrophes only.
"""

from __future__ import annotations

import functools
import itertools
import re

_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
                ">", "<", "@", "`", ",", "?", "!")
_DIGIT_GROUP_COMMA = re.compile(r"\d,\d")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})

# Canonical spellings; words such as "its", "lets", "well", "were" are real words
# without an apostrophe and are deliberately absent, as in the official list.
_CANONICAL_CONTRACTIONS = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't "
    "hadn't've hasn't haven't he'd he'd've he's how'd how'll how's i'd've i'm i've "
    "isn't it'd it'd've it'll ma'am mightn't mightn't've might've mustn't must've "
    "needn't not've o'clock oughtn't shan't she'd've she's should've shouldn't "
    "shouldn't've somebody'd somebody'd've somebody'll somebody's someone'd "
    "someone'd've someone'll someone's something'd something'd've something'll "
    "that's there'd there'd've there're there's they'd they'd've they'll they're "
    "they've 'twas wasn't we'd've we've weren't what'll what're what's what've "
    "when's where'd where's where've who'd who'd've who'll who's who've why'll "
    "why're why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've "
    "you'd you'd've you'll you're you've"
).split()


def _contraction_map() -> dict[str, str]:
  """Maps each spelling with a proper subset of the apostrophes to the canonical one."""
  mapping = {}
  for canonical in _CANONICAL_CONTRACTIONS:
    pieces = canonical.split("'")
    # One choice per apostrophe: keep it or drop it; all-kept is the canonical form.
    for keep in itertools.product(("'", ""), repeat=len(pieces) - 1):
      variant = pieces[0] + "".join(k + p for k, p in zip(keep, pieces[1:]))
      if variant != canonical:
        mapping[variant] = canonical
  return mapping


_CONTRACTIONS = _contraction_map()


def process_punctuation(text: str) -> str:
  """Step 2 of the official normalisation (see the module docstring)."""
  out = text
  drop_all = _DIGIT_GROUP_COMMA.search(text) is not None
  for p in _PUNCTUATION:
    # The decision looks at the original text, as the official script does.
    if drop_all or (p + " ") in text or (" " + p) in text:
      out = out.replace(p, "")
    else:
      out = out.replace(p, " ")
  return _PERIOD_NOT_BEFORE_DIGIT.sub("", out)


def process_digit_article(text: str) -> str:
  """Step 3 of the official normalisation: lower case, digits, articles, contractions."""
  words = []
  for word in text.lower().split():
    word = _NUMBER_WORDS.get(word, word)
    if word in _ARTICLES:
      continue
    words.append(_CONTRACTIONS.get(word, word))
  return " ".join(words)


@functools.lru_cache(maxsize=65536)
def normalize_answer(answer: str | bytes) -> str:
  """Canonical form of an answer, so that equal meanings compare equal as strings.

  Args:
    answer: a predicted or ground-truth answer; bytes are decoded as UTF-8 because
      seqio and tf.data hand text over as bytes.

  Returns:
    The normalised answer, e.g. ``"Two dogs."`` -> ``"2 dogs"``.
  """
  if isinstance(answer, bytes):
    answer = answer.decode("utf-8")
  if not isinstance(answer, str):
    raise TypeError(f"An answer must be str or bytes, got {type(answer).__name__}: {answer!r}")
  text = answer.replace("\n", " ").replace("\t", " ").strip()
  text = text.replace("\u2019", "'")  # typographic apostrophe -> ASCII
  return process_digit_article(process_punctuation(text))
