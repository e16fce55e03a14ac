"""Does Whisper in PyTorch, loaded from the shipped CTranslate2 files, transcribe as CTranslate2?

For each model (tiny.en, base) both backbones transcribe the real clips of
`../shared/audio/speech` (27) and `../shared/audio/librispeech` (300), uncompressed, greedy,
float32, with the same decoder input (the valid frames plus the last second of the window).
The conversion passes when the transcripts are identical on at least 97% of the clips and
the corpus word error rates differ by at most 0.002. Mismatches are listed with both texts.

It also times both (seconds per clip, encoder and decoder, on ``--threads`` CPU threads),
and CTranslate2 with beam 5 on every ``--beam-every``-th clip beside greedy on the same clips,
for planning studies. Times depend on the machine and its load (recorded in the JSON);
compare them only within one run.

    python benchmarks/whisper_conversion.py --models tiny.en             # ~30 min, 1 core
    python benchmarks/whisper_conversion.py --models base --limit 10     # a timing probe
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_AUDIO = REPO.parent / "shared" / "audio"
FOLDERS = ("speech", "librispeech")
BATCH = 8
MIN_IDENTICAL = 0.97
MAX_WER_GAP = 0.002


def clips(limit: int | None) -> list[tuple[str, str, object]]:
    """``(folder, item id, reference)`` and audio of every clip, speech folder first."""
    from ltbm.io.audio import load_audio
    from ltbm.tasks.speech import SpeechTask

    found = []
    for folder in FOLDERS:
        root = Path(os.environ.get("LTBM_SHARED_AUDIO", SHARED_AUDIO)) / folder
        for item in SpeechTask(root).items():
            found.append((folder, item.id, item.references[0], load_audio(item.audio)))
    return found[:limit] if limit else found


def timed_transcripts(backbone, audios, beam: int | None = None) -> tuple[list, float, float]:
    """Generations of ``audios`` in batches, and the seconds spent encoding and decoding."""
    if beam is not None:
        backbone.beam_size = beam
    out, encode_s, decode_s = [], 0.0, 0.0
    for start in range(0, len(audios), BATCH):
        batch = audios[start : start + BATCH]
        tick = time.perf_counter()
        encoded = backbone.encode(batch)
        encode_s += time.perf_counter() - tick
        tick = time.perf_counter()
        out += backbone.decode(encoded)
        decode_s += time.perf_counter() - tick
    return out, encode_s, decode_s


def compare_model(name: str, items: list, threads: int, beam_every: int) -> dict:
    import torch

    from ltbm.backbones.whisper.ct2 import WhisperCT2
    from ltbm.backbones.whisper.hf import WhisperHF
    from ltbm.metrics.wer import word_error_rate

    torch.set_num_threads(threads)
    ct2 = WhisperCT2(model=name, beam_size=1, intra_threads=threads, cache_clips=0)
    pytorch = WhisperHF.from_ct2(name, cache_clips=0, threads=threads)
    audios = [audio for *_, audio in items]
    print(f"{name}: {len(audios)} clips, CTranslate2 greedy", file=sys.stderr)
    theirs, ct2_encode, ct2_decode = timed_transcripts(ct2, audios)
    print(f"{name}: PyTorch greedy", file=sys.stderr)
    ours, hf_encode, hf_decode = timed_transcripts(pytorch, audios)
    references = [reference for _, _, reference, _ in items]
    wer_ct2 = word_error_rate(references, [g.text for g in theirs]).wer
    wer_hf = word_error_rate(references, [g.text for g in ours]).wer
    mismatches = [
        {"folder": folder, "id": item_id, "ctranslate2": a.text, "pytorch": b.text}
        for (folder, item_id, _, _), a, b in zip(items, theirs, ours, strict=True)
        if a.text != b.text
    ]
    identical = 1 - len(mismatches) / len(items)
    count = len(items)
    result = {
        "clips": count,
        "identical": count - len(mismatches),
        "identical_fraction": round(identical, 4),
        "wer_ctranslate2": round(wer_ct2, 5),
        "wer_pytorch": round(wer_hf, 5),
        "wer_gap": round(abs(wer_ct2 - wer_hf), 5),
        "passed": identical >= MIN_IDENTICAL and abs(wer_ct2 - wer_hf) <= MAX_WER_GAP,
        "per_folder_wer": folder_wers(items, theirs, ours),
        "mismatches": mismatches,
        "seconds_per_clip": {
            "ctranslate2_greedy": per_clip(ct2_encode, ct2_decode, count),
            "pytorch_greedy": per_clip(hf_encode, hf_decode, count),
        },
        "ctranslate2_identity": ct2.identity(),
        "pytorch_identity": pytorch.identity(),
    }
    if beam_every:
        result["beam_timing"] = beam_timing(ct2, audios[::beam_every])
    return result


def folder_wers(items, theirs, ours) -> dict:
    from ltbm.metrics.wer import word_error_rate

    found = {}
    for folder in FOLDERS:
        rows = [i for i, item in enumerate(items) if item[0] == folder]
        if rows:
            references = [items[i][2] for i in rows]
            found[folder] = {
                "clips": len(rows),
                "ctranslate2": round(
                    word_error_rate(references, [theirs[i].text for i in rows]).wer, 5
                ),
                "pytorch": round(word_error_rate(references, [ours[i].text for i in rows]).wer, 5),
            }
    return found


def beam_timing(ct2, audios) -> dict:
    """CTranslate2 greedy and beam 5 on the same clips, one after the other."""
    print(f"beam timing on {len(audios)} clips", file=sys.stderr)
    _, greedy_encode, greedy_decode = timed_transcripts(ct2, audios, beam=1)
    _, beam_encode, beam_decode = timed_transcripts(ct2, audios, beam=5)
    ct2.beam_size = 1
    return {
        "clips": len(audios),
        "ctranslate2_greedy": per_clip(greedy_encode, greedy_decode, len(audios)),
        "ctranslate2_beam5": per_clip(beam_encode, beam_decode, len(audios)),
    }


def per_clip(encode_s: float, decode_s: float, count: int) -> dict:
    return {
        "encode": round(encode_s / count, 3),
        "decode": round(decode_s / count, 3),
        "total": round((encode_s + decode_s) / count, 3),
    }


def machine(threads: int) -> dict:
    import ctranslate2
    import torch
    import transformers

    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "commit": commit or None,
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "ctranslate2": ctranslate2.__version__,
        "batch": BATCH,
        "decoding": "greedy, float32, uncompressed (valid frames + 1 s tail), max 224 new tokens",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny.en,base", help="comma-separated: tiny.en,base")
    parser.add_argument("--limit", type=int, default=None, help="only the first N clips")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for both runtimes")
    parser.add_argument("--beam-every", type=int, default=11, help="beam-5 timing sample (0: off)")
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "whisper-conversion.json"
    )
    args = parser.parse_args(argv)
    items = clips(args.limit)
    report = {
        "settings": machine(args.threads),
        "criteria": {"min_identical_fraction": MIN_IDENTICAL, "max_wer_gap": MAX_WER_GAP},
        "models": {},
    }
    start = time.perf_counter()
    for name in args.models.split(","):
        report["models"][name] = compare_model(name, items, args.threads, args.beam_every)
        report["settings"]["wall_seconds"] = round(time.perf_counter() - start, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        summary = {
            k: v
            for k, v in report["models"][name].items()
            if k not in ("mismatches", "ctranslate2_identity", "pytorch_identity")
        }
        print(json.dumps({name: summary}, indent=2))
    print(f"written to {args.out}", file=sys.stderr)
    return 0 if all(m["passed"] for m in report["models"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
