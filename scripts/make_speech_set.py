"""Make ltbm's built-in English speech set with espeak-ng: src/ltbm/data/speech/.

The set lets ``ltbm demo`` and the tests run a real model on real audio with nothing to
download, and it is ours to ship: synthetic speech from sentences written for it, so no
third-party recording licence applies (the recordings in ../shared/audio/speech/ may not
be copied into the project).

Each sentence is spoken by one of several espeak-ng voices at 140–180 words per minute,
resampled to 16 kHz mono and written as 16-bit FLAC, with ``manifest.tsv`` (``file``,
``transcript``, ``voice``, ``words_per_minute``, ``duration_s``). The output depends only
on this file and the installed espeak-ng, so rerunning it reproduces the set.

    python scripts/make_speech_set.py [--out src/ltbm/data/speech]

Needs espeak-ng (apt install espeak-ng), soundfile and soxr.
"""

from __future__ import annotations

import argparse
import csv
import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import soundfile
import soxr

SAMPLE_RATE = 16_000
MIN_SECONDS, MAX_SECONDS = 3.0, 15.0
VOICES = ("en-us", "en-gb", "en+f3", "en+m3", "en-us+f2")
SPEEDS = (140, 150, 160, 170, 180)

# Plain sentences, numbers spelled out, no names espeak-ng mispronounces badly.
SENTENCES = (
    "The train to the coast leaves at seven in the morning and arrives a little after ten.",
    "Please close the kitchen window before you leave the room this evening.",
    "She planted tomatoes, beans and three rows of carrots in the garden behind the house.",
    "The library will be closed on Monday for repairs to the roof.",
    "We need two more chairs and a bigger table for the meeting this afternoon.",
    "A strong wind blew across the lake and the small boats rocked against the dock.",
    "He forgot his umbrella at the station and walked home in the rain.",
    "The recipe calls for four eggs, a cup of sugar and half a cup of butter.",
    "Turn left at the second traffic light and the bakery is on your right.",
    "The children counted the stars until they fell asleep on the grass.",
    "Our flight was delayed by forty minutes because of heavy fog at the airport.",
    "The museum has a new room full of old maps and hand drawn pictures of ships.",
    "Could you send me the finished report by the end of the week, or on Monday at the latest?",
    "The river rose quickly after two days of rain and flooded the lower fields.",
    "I bought a blue notebook, a pencil and a small box of paper clips.",
    "The doctor asked him to drink more water and to sleep at least eight hours a night.",
    "Every summer the town holds a market where farmers sell fruit, cheese and bread.",
    "The old clock in the hall stopped at twenty past three and nobody wound it again.",
    "Remember to switch off all the lights and lock the back door when you go out.",
    "The team scored twice in the last ten minutes and won the match.",
    "A quiet voice on the radio read the weather forecast for the mountains.",
    "My neighbour keeps bees, and every autumn she gives us a jar of honey.",
    "The bridge was built over one hundred years ago and is still in daily use.",
    "Please write your full answer on the first line of the form, then sign at the bottom.",
    "The cat jumped onto the table and knocked over a glass of milk.",
    "We walked along the beach and collected smooth white stones.",
    "The price of the tickets went up by five pounds this year.",
    "He learned to play the piano at the age of six and practised every evening.",
    "Snow fell all night, and in the morning the roads were white and silent.",
    "The bus was full, so we waited twenty minutes for the next one.",
    "Fresh bread smells wonderful when it comes out of the oven.",
    "The engineer checked every wire twice before turning the power back on.",
    "Thirty students took the exam and all but one of them passed.",
    "The path climbs steeply through the forest and ends at a wooden hut.",
    "Can you hear the birds singing in the tall trees outside the kitchen window?",
    "She painted the kitchen a pale yellow colour that made the room look larger.",
    "The shop opens at nine and closes at half past five on weekdays.",
    "After dinner we played cards by the fire and talked quietly until midnight.",
    "The farmer drove his old red tractor slowly down the narrow lane towards the village.",
    "A cold cup of coffee sat forgotten on the desk next to the keyboard.",
    "The ship sailed out of the harbour as the sun went down behind the hills.",
    "Please keep your ticket with you until the end of the journey, as it may be checked.",
    "The garden was full of roses, and the air smelled sweet after the rain.",
    "Two hundred people came to hear the concert in the park on Saturday evening.",
    "The kettle boiled, and she made a pot of tea for everyone in the office.",
    "Nobody knew who had left the small green bicycle outside the school gate.",
    "When the storm finally passed, the whole village came out to clear the fallen branches "
    "from the road, and by the evening the buses were running again as if nothing had "
    "happened.",
    "The report explains that the new heating system uses about a third less energy than "
    "the old one, and that the cost will be paid back within six or seven years.",
    "On the first morning of the holiday we hired bicycles, rode along the canal for nearly "
    "fifteen miles, and stopped for lunch at a small cafe beside a lock.",
    "If you are not sure how to answer a question, leave it for now, finish the rest of the "
    "paper, and come back to it at the end when you have more time to think.",
)


def synthesize(text: str, voice: str, speed: int) -> np.ndarray:
    """Speak ``text`` with espeak-ng; return 16 kHz mono float32 samples."""
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text],
        check=True,
        capture_output=True,
    ).stdout
    samples, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    return soxr.resample(samples, rate, SAMPLE_RATE, quality="HQ").astype(np.float32)


def make_set(out: Path) -> list[dict[str, str]]:
    """Write every clip and the manifest into ``out``; return the manifest rows."""
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng not found: apt install espeak-ng")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, text in enumerate(SENTENCES):
        voice = VOICES[index % len(VOICES)]
        speed = SPEEDS[(index + index // len(VOICES)) % len(SPEEDS)]
        samples = synthesize(text, voice, speed)
        seconds = len(samples) / SAMPLE_RATE
        if not MIN_SECONDS <= seconds <= MAX_SECONDS:
            raise SystemExit(
                f"sentence {index} lasts {seconds:.1f} s at {speed} wpm, outside "
                f"[{MIN_SECONDS}, {MAX_SECONDS}] s; shorten or lengthen it: {text!r}"
            )
        name = f"speech_{index:03d}.flac"
        soundfile.write(
            out / name, samples, SAMPLE_RATE, format="FLAC", subtype="PCM_16", compression_level=1.0
        )
        rows.append(
            {
                "file": name,
                "transcript": text,
                "voice": voice,
                "words_per_minute": str(speed),
                "duration_s": f"{seconds:.3f}",
            }
        )
    with open(out / "manifest.tsv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    return rows


def main() -> None:
    default_out = Path(__file__).resolve().parents[1] / "src" / "ltbm" / "data" / "speech"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args()
    rows = make_set(args.out)
    total = sum(float(r["duration_s"]) for r in rows)
    size = sum(p.stat().st_size for p in args.out.glob("*.flac"))
    print(f"wrote {len(rows)} clips ({total:.0f} s, {size / 1e6:.1f} MB) to {args.out}")


if __name__ == "__main__":
    main()
