"""Captioning metrics as the audio-captioning literature reports them.

BLEU-1..4, METEOR, ROUGE-L and CIDEr-D come from pycocoevalcap (the coco-caption code that
the DCASE and AudioCaps/Clotho papers use), computed after the Stanford PTB tokenizer with
punctuation removed, exactly as coco-caption's ``COCOEvalCap`` does. The tokenizer and
METEOR run on Java.

CIDEr-D: pycocoevalcap's ``Cider`` class is named CIDEr but implements CIDEr-D (Vedantam
et al. 2015, section 5.1): n-gram tf-idf vectors with the candidate's counts clipped to the
reference's (``min(vec_hyp, vec_ref) * vec_ref``), a Gaussian length penalty with
sigma = 6, no stemming, scaled by 10. So its number is reported here as ``cider_d``. Its
IDF is computed from the references of the items being scored: a score on a subset (a
partial AudioCaps copy) is not comparable to a full-set score, which is why the result
records the item count, and a single item always scores 0 (log 1 = 0 makes every IDF 0).

SPICE (and SPIDEr = (CIDEr-D + SPICE) / 2) runs only when SPICE's Stanford CoreNLP jars are
already on disk: pycocoevalcap would otherwise download about 400 MB on first use, which an
evaluation must never do behind the user's back. FENSE runs only when the ``fense``
package and its models are available locally. Whatever is not computed is listed in
``skipped`` with the reason and the fix; nothing is dropped silently.

Scores keep pycocoevalcap's scale: CIDEr-D in [0, 10], the others in [0, 1].
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ltbm.tasks.base import Item

BLEU_METRICS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4")
CORE_METRICS = (*BLEU_METRICS, "meteor", "rouge_l", "cider_d")
"""Always computed when asked for (they need only Java and pycocoevalcap)."""
OPTIONAL_METRICS = ("spice", "spider", "fense")
"""Computed when their resources are present locally, else listed in ``skipped``."""
METRIC_GROUPS = ("bleu", "meteor", "rouge_l", "cider_d", "spice", "spider", "fense")
"""Names accepted in ``metrics=``: ``bleu`` selects BLEU-1..4."""

JAVA_MISSING = (
    "Java is needed for the PTB tokenizer and METEOR: apt-get install openjdk-17-jre-headless"
)
SPICE_JARS = (
    "spice-1.0.jar",
    "lib/stanford-corenlp-3.6.0.jar",
    "lib/stanford-corenlp-3.6.0-models.jar",
)
"""Paths under pycocoevalcap/spice that SPICE needs (the CoreNLP pair is what
pycocoevalcap downloads on first use)."""
FENSE_ECHECKER = "echecker_clotho_audiocaps_base"
FENSE_SBERT = "paraphrase-TinyBERT-L6-v2"

_LINE_BREAKS = re.compile(r"[\r\n\u2028\u2029\x0b\x0c\x85]")


class CaptionMetricsError(RuntimeError):
    """The metrics cannot run as asked; the message says what is missing and the fix."""


@dataclass
class CaptionScores:
    """Corpus scores, which metrics were computed, which were skipped and why, the number
    of items (CIDEr-D's IDF depends on the evaluated set) and how many of them were scored
    as an empty caption because their clip failed."""

    metrics: dict[str, float]
    computed: list[str]
    skipped: dict[str, str]
    items: int
    per_item: dict[str, dict[str, float]] = field(default_factory=dict)
    failed_as_empty: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The summary the harness writes (per-item scores stay out of it)."""
        return {
            "metrics": dict(self.metrics),
            "computed": list(self.computed),
            "skipped": dict(self.skipped),
            "items": self.items,
            "failed_as_empty": self.failed_as_empty,
        }


def require_java() -> str:
    """Path of the ``java`` executable, or a CaptionMetricsError that says how to install it."""
    java = shutil.which("java")
    if java is None:
        raise CaptionMetricsError(JAVA_MISSING)
    return java


def pycocoevalcap_dir() -> Path:
    """The installed pycocoevalcap package folder (it holds the jars)."""
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        raise CaptionMetricsError(
            "pycocoevalcap is not installed: pip install pycocoevalcap "
            "(or pip install 'ltbm[eval]')"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def spice_unavailable(spice_dir: Path | None = None) -> str | None:
    """Why SPICE cannot run without downloading anything, or None when it can."""
    folder = spice_dir if spice_dir is not None else pycocoevalcap_dir() / "spice"
    missing = [name for name in SPICE_JARS if not (folder / name).is_file()]
    if not missing:
        return None
    return (
        f"SPICE's jars are not on disk ({', '.join(missing)} missing under {folder}); "
        "to get them (about 400 MB from nlp.stanford.edu) run once: python -c "
        "'from pycocoevalcap.spice.get_stanford_models import get_stanford_models; "
        "get_stanford_models()'"
    )


def fense_unavailable() -> str | None:
    """Why FENSE cannot run from local files, or None when it can."""
    fix = (
        "to enable it: pip install fense, then run FENSE once online so that it caches "
        f"{FENSE_ECHECKER}.ckpt and the {FENSE_SBERT} sentence model"
    )
    if importlib.util.find_spec("fense") is None:
        return f"the fense package is not installed; {fix}"
    checkpoint = _fense_checkpoint()
    if checkpoint is None:
        return f"FENSE's error-detector checkpoint {FENSE_ECHECKER}.ckpt is not cached; {fix}"
    return None


def ptb_tokenize(texts: Sequence[str], java: str | None = None) -> list[str]:
    """Tokenize with the Stanford PTB tokenizer and drop punctuation, as coco-caption does.

    Same jar, flags (``-preserveLines -lowerCase``) and punctuation list as pycocoevalcap's
    ``PTBTokenizer``; the input goes through a private temporary file rather than one in the
    (possibly read-only) package folder, and line breaks inside a caption become spaces so
    that one caption stays one line.
    """
    from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS

    if not texts:
        return []
    jar = pycocoevalcap_dir() / "tokenizer" / "stanford-corenlp-3.4.1.jar"
    lines = [_LINE_BREAKS.sub(" ", text) for text in texts]
    with tempfile.TemporaryDirectory(prefix="ltbm-ptb-") as folder:
        source = Path(folder) / "captions.txt"
        source.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        command = [
            java or require_java(),
            "-cp",
            str(jar),
            "edu.stanford.nlp.process.PTBTokenizer",
            "-preserveLines",
            "-lowerCase",
            "-encoding",
            "UTF-8",
            str(source),
        ]
        done = subprocess.run(command, capture_output=True, check=False)
    if done.returncode != 0:
        raise CaptionMetricsError(
            f"the PTB tokenizer failed (exit {done.returncode}): "
            f"{done.stderr.decode(errors='replace')[-500:]}"
        )
    output = done.stdout.decode("utf-8").split("\n")
    if len(output) < len(lines):
        raise CaptionMetricsError(
            f"the PTB tokenizer returned {len(output)} lines for {len(lines)} captions"
        )
    punctuation = set(PUNCTUATIONS)
    return [
        " ".join(w for w in line.rstrip().split(" ") if w and w not in punctuation)
        for line in output[: len(lines)]
    ]


class CaptionScorer:
    """Scores caption predictions; keeps one METEOR process for repeated calls.

    METEOR's Java process spends several seconds loading its paraphrase table on the first
    call, so score many runs with one scorer (``with CaptionScorer() as scorer: ...``).
    ``metrics`` picks metrics by the names in :data:`METRIC_GROUPS` (default: all);
    ``spice_dir`` overrides where SPICE's jars are looked for.
    """

    def __init__(
        self, metrics: Collection[str] | None = None, *, spice_dir: Path | None = None
    ) -> None:
        self.requested = _check_requested(metrics)
        self.spice_dir = spice_dir
        self.java = require_java()
        pycocoevalcap_dir()
        self._meteor: Any = None

    def __enter__(self) -> CaptionScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop METEOR's Java process (pycocoevalcap stops it only in ``__del__``)."""
        meteor, self._meteor = self._meteor, None
        if meteor is not None:
            if meteor.lock.locked():  # a failed compute_score leaves its lock held
                meteor.lock.release()
            meteor.__del__()

    def score(
        self,
        predictions: Mapping[str, str | None],
        items: Sequence[Item],
        failed_ids: Collection[str] = (),
    ) -> CaptionScores:
        """Score ``predictions`` (item id -> caption) against the items' references.

        Every item needs a prediction (an empty string scores as an empty caption) and at
        least one reference; predictions for other ids are ignored, so the items define the
        evaluated set. Items in ``failed_ids`` (their clip failed) are scored as an empty
        caption and counted in ``failed_as_empty``: a corpus score that left them out would
        rate a run with failures above the same run without them.
        """
        failed_set = set(failed_ids)
        failed = {item.id for item in items if item.id in failed_set}
        candidates, references = _pair({**predictions, **dict.fromkeys(failed, "")}, items)
        ids = [item.id for item in items]
        tokens = ptb_tokenize(candidates + [r for refs in references for r in refs], self.java)
        res = {i: [tokens[n]] for n, i in enumerate(ids)}
        gts = _regroup(ids, references, tokens[len(candidates) :])
        result = CaptionScores(
            metrics={},
            computed=[],
            skipped={},
            items=len(items),
            per_item={i: {} for i in ids},
            failed_as_empty=len(failed),
        )
        self._skip_unrequested(result)
        if "bleu" in self.requested:
            self._bleu(gts, res, result)
        if "meteor" in self.requested:
            self._add(result, "meteor", *self._meteor_scores(gts, res))
        if "rouge_l" in self.requested:
            from pycocoevalcap.rouge.rouge import Rouge

            self._add(result, "rouge_l", *Rouge().compute_score(gts, res))
        if "cider_d" in self.requested:
            from pycocoevalcap.cider.cider import Cider

            self._add(result, "cider_d", *Cider().compute_score(gts, res))
        if "spice" in self.requested or "spider" in self.requested:
            self._spice(gts, res, result)
        if "fense" in self.requested:
            self._fense(candidates, references, result)
        return result

    def _skip_unrequested(self, result: CaptionScores) -> None:
        for group in METRIC_GROUPS:
            if group not in self.requested:
                for name in BLEU_METRICS if group == "bleu" else (group,):
                    result.skipped[name] = "not requested"

    def _bleu(self, gts: dict, res: dict, result: CaptionScores) -> None:
        from pycocoevalcap.bleu.bleu import Bleu

        corpus, per_item = Bleu(4).compute_score(gts, res, verbose=0)
        for n, name in enumerate(BLEU_METRICS):
            self._add(result, name, corpus[n], per_item[n])

    def _meteor_scores(self, gts: dict, res: dict) -> tuple[float, list[float]]:
        if self._meteor is None:
            from pycocoevalcap.meteor.meteor import Meteor

            self._meteor = Meteor()
        return self._meteor.compute_score(gts, res)

    def _spice(self, gts: dict, res: dict, result: CaptionScores) -> None:
        reason = spice_unavailable(self.spice_dir)
        if reason is not None:
            for name in ("spice", "spider"):
                if name in self.requested:
                    result.skipped[name] = reason
            return
        corpus, per_item = _run_spice(gts, res)
        if "spice" in self.requested:
            self._add(result, "spice", corpus, per_item)
        if "spider" in self.requested:
            if "cider_d" not in result.metrics:
                from pycocoevalcap.cider.cider import Cider

                cider = Cider().compute_score(gts, res)
            else:
                cider = (
                    result.metrics["cider_d"],
                    [result.per_item[i]["cider_d"] for i in result.per_item],
                )
            self._add(
                result,
                "spider",
                (cider[0] + corpus) / 2,
                [(c + s) / 2 for c, s in zip(cider[1], per_item, strict=True)],
            )

    def _fense(
        self, candidates: list[str], references: list[list[str]], result: CaptionScores
    ) -> None:
        reason = fense_unavailable()
        if reason is not None:
            result.skipped["fense"] = reason
            return
        try:
            scores = _run_fense(candidates, references)
        except Exception as error:  # a missing cached model surfaces here (offline mode)
            result.skipped["fense"] = f"FENSE failed offline ({type(error).__name__}: {error})"
            return
        self._add(result, "fense", sum(scores) / len(scores), scores)

    @staticmethod
    def _add(result: CaptionScores, name: str, corpus: Any, per_item: Any) -> None:
        result.metrics[name] = float(corpus)
        result.computed.append(name)
        for item_id, value in zip(result.per_item, list(per_item), strict=True):
            result.per_item[item_id][name] = float(value)


def score_captions(
    predictions: Mapping[str, str | None],
    items: Sequence[Item],
    metrics: Collection[str] | None = None,
    *,
    spice_dir: Path | None = None,
    failed_ids: Collection[str] = (),
) -> CaptionScores:
    """Score once (starts and stops METEOR); see :class:`CaptionScorer` to score many runs."""
    with CaptionScorer(metrics, spice_dir=spice_dir) as scorer:
        return scorer.score(predictions, items, failed_ids)


def _check_requested(metrics: Collection[str] | None) -> set[str]:
    if metrics is None:
        return set(METRIC_GROUPS)
    names = {name.lower() for name in metrics}
    names = {"bleu" if name in BLEU_METRICS else name for name in names}
    unknown = sorted(names - set(METRIC_GROUPS))
    if unknown:
        raise CaptionMetricsError(
            f"unknown caption metric(s) {', '.join(unknown)}; "
            f"choose from {', '.join(METRIC_GROUPS)}"
        )
    if not names:
        raise CaptionMetricsError(
            f"no caption metric requested; choose from {', '.join(METRIC_GROUPS)}"
        )
    return names


def _pair(
    predictions: Mapping[str, str | None], items: Sequence[Item]
) -> tuple[list[str], list[list[str]]]:
    """Candidates and references in item order, with the checks that make scores meaningful."""
    if not items:
        raise CaptionMetricsError("no items to score: the evaluated set is empty")
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        raise CaptionMetricsError("item ids repeat; each clip must appear once in the scored set")
    missing = [i for i in ids if i not in predictions]
    if missing:
        raise CaptionMetricsError(
            f"no prediction for {len(missing)} of {len(ids)} items (e.g. {missing[:3]}); finish "
            "the run or score only the items that have predictions"
        )
    no_refs = [item.id for item in items if not any(r.strip() for r in item.references)]
    if no_refs:
        raise CaptionMetricsError(f"items without reference captions: {no_refs[:3]}")
    candidates = [str(predictions[i] or "") for i in ids]
    references = [[r for r in item.references if r.strip()] for item in items]
    return candidates, references


def _regroup(ids: list[str], references: list[list[str]], flat: list[str]) -> dict[str, list[str]]:
    grouped, start = {}, 0
    for item_id, refs in zip(ids, references, strict=True):
        grouped[item_id] = flat[start : start + len(refs)]
        start += len(refs)
    return grouped


def _run_spice(gts: dict, res: dict) -> tuple[float, list[float]]:
    """pycocoevalcap's SPICE on the tokenized captions (as COCOEvalCap runs it)."""
    from pycocoevalcap.spice.spice import Spice

    corpus, per_item = Spice().compute_score(gts, res)
    # Spice returns its per-item scores in sorted-id order; put them back in item order.
    by_id = dict(zip(sorted(gts), per_item, strict=True))
    values = [float(by_id[item_id]["All"]["f"]) for item_id in gts]
    return float(corpus), [0.0 if math.isnan(v) else v for v in values]


def _fense_checkpoint() -> Path | None:
    """Where a cached FENSE error-detector checkpoint is, if anywhere.

    Asks the fense package for its data folder when it exposes one, and also looks in
    ``$FENSE_DATA``, ``~/.fense_data`` and ``~/fense_data``.
    """
    folders: list[Path] = []
    if os.environ.get("FENSE_DATA"):
        folders.append(Path(os.environ["FENSE_DATA"]).expanduser())
    try:
        utils = importlib.import_module("fense.download_utils")
        home = getattr(utils, "get_data_home", None) or getattr(utils, "_get_data_home", None)
        if callable(home):
            folders.append(Path(home()))
    except Exception:  # an unusual fense layout only loses this hint
        pass
    folders += [Path("~/.fense_data").expanduser(), Path("~/fense_data").expanduser()]
    for folder in folders:
        candidate = folder / f"{FENSE_ECHECKER}.ckpt"
        if candidate.is_file():
            return candidate
    return None


@contextmanager
def _offline() -> Iterator[None]:
    """Hugging Face libraries raise instead of downloading while this is active."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {key: os.environ.get(key) for key in keys}
    os.environ.update({key: "1" for key in keys})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _run_fense(candidates: list[str], references: list[list[str]]) -> list[float]:
    """Per-item FENSE with the paper's setting (TinyBERT SBERT + base error detector), CPU,
    offline. FENSE takes raw captions: its models have their own tokenizers."""
    evaluator_module = importlib.import_module("fense.evaluator")
    with _offline():
        evaluator = evaluator_module.Evaluator(
            device="cpu", sbert_model=FENSE_SBERT, echecker_model=FENSE_ECHECKER
        )
        scores = evaluator.corpus_score(candidates, references, agg_score="none")
    return [float(s) for s in scores]
