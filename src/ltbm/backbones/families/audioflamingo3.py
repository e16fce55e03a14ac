"""Audio Flamingo 3 (``AudioFlamingo3ForConditionalGeneration``) with compressed audio tokens.

The processor cuts a clip into 30 s windows (up to 20: 10 minutes), the encoder turns each
window into up to 750 tokens (after its AvgPool and LayerNorm), and the prompt holds one run
of ``<sound>`` placeholders per clip, as long as the valid tokens of all its windows.
ltbm compresses each clip over the time-ordered concatenation of its windows, so a merge
may cross a window boundary and K = kept_tokens(N) counts the whole clip; then the projector
(Linear → GELU → Linear) runs on the K kept tokens only.

Audio longer than the processor's ``max_audio_len`` (600 s) is refused rather than cut.
Silent audio works: the encoder still makes N tokens.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ltbm.backbones.hf.adapter import (
    AudioAdapter,
    EncodedAudio,
    budget,
    pad_clips,
)
from ltbm.backbones.hf.attention_capture import AttentionCapture, last_attention
from ltbm.backbones.hf.pipeline import HFPipeline
from ltbm.core.syncs import host_tensor
from ltbm.io.audio import SAMPLE_RATE
from ltbm.methods import Method
from ltbm.methods.pruning import attention_received, pool_frames_to_tokens

MAX_SECONDS = 600.0


def window_attention_scores(
    queries: torch.Tensor, keys: torch.Tensor, window_tokens: torch.Tensor
) -> torch.Tensor:
    """``[W, tokens]`` attention each token received inside its own window.

    The encoder attends within a window only, so attention is scored per window with the
    prune scorer's own function, then multiplied by the window's frame count: a plain mean
    would favour short windows (each query spreads the same mass over fewer keys), while
    this makes the uniform score 1 in every window, so tokens of different windows of a
    clip compare fairly. Within one window the ranking is unchanged.
    """
    tokens = queries.shape[2] // 2
    scores = []
    for window in range(queries.shape[0]):
        frames = window_tokens[window : window + 1] * 2
        received = attention_received(
            queries[window : window + 1], keys[window : window + 1], frames
        )
        scores.append(pool_frames_to_tokens(received, tokens) * frames.float())
    return torch.cat(scores)


def group_windows(
    window_tokens: Sequence[int],
    placeholders: Sequence[int],
    full: int,
    kept: Callable[[int], int],
) -> list[int]:
    """Windows per clip, recovered from the tensors alone (the drop-in hook sees no audio).

    The processor gives each clip consecutive windows, all full (``full`` tokens) but the
    last, and ``kept(N)`` placeholders for a clip of N tokens. This searches every split
    consistent with both and returns it when it is the only one; two consistent splits
    (possible only in contrived batches) are refused rather than guessed.
    """
    count, total = len(window_tokens), len(placeholders)

    @functools.cache
    def splits(window: int, clip: int) -> tuple[int, int]:
        """(number of consistent splits of the rest, capped at 2; windows of this clip)."""
        if clip == total:
            return int(window == count), 0
        ways, choice, tokens = 0, 0, 0
        for end in range(window, count):
            tokens += window_tokens[end]
            if kept(tokens) == placeholders[clip]:
                rest, _ = splits(end + 1, clip + 1)
                if rest:
                    ways, choice = ways + rest, end + 1 - window
            if window_tokens[end] < full:
                break  # a clip's windows are full except its last
        return min(ways, 2), choice

    ways, _ = splits(0, 0)
    if ways != 1:
        problem = "no way" if ways == 0 else "more than one way"
        raise ValueError(
            f"there is {problem} to split {count} windows of audio features ({list(window_tokens)} "
            f"tokens) into {total} clips with {list(placeholders)} audio placeholders; process "
            "the text and audio together inside ltbm.compressed(...) so the placeholder counts "
            "match, or use the ltbm pipeline (ltbm.load)"
        )
    result, window = [], 0
    for clip in range(total):
        taken = splits(window, clip)[1]
        result.append(taken)
        window += taken
    return result


class AudioFlamingo3Adapter(AudioAdapter):
    """Runs the AF3 encoder on every window, as ``get_audio_features`` does, and joins each
    clip's windows in time order."""

    model_type = "audioflamingo3"
    mask_key = "input_features_mask"
    frame_rate = 25.0

    def encode(
        self,
        features: torch.Tensor,
        frame_mask: torch.Tensor,
        windows: Sequence[int],
        attention: bool,
    ) -> EncodedAudio:
        if sum(windows) != features.shape[0]:
            raise ValueError(
                f"{features.shape[0]} windows of features but the clips need {sum(windows)}"
            )
        device = self.tower.conv1.weight.device
        features = features.to(device, self.tower.conv1.weight.dtype)
        # Token counts from the processor's mask, on the host where it arrives.
        window_tokens = self.window_tokens(frame_mask)
        frame_mask = frame_mask.to(device)
        if attention:
            with AttentionCapture(last_attention(self.tower)) as capture:
                hidden = self._run_tower(features, frame_mask)
            queries, keys = capture.queries_keys()
        else:
            hidden = self._run_tower(features, frame_mask)
        clips = self._join(hidden, window_tokens, windows)
        lengths = host_tensor([clip.shape[0] for clip in clips])
        signals: dict[str, torch.Tensor] = {}
        if attention:
            on_device = torch.tensor(window_tokens).to(device, non_blocking=True)
            scores = window_attention_scores(queries, keys, on_device)
            signals["scores"] = pad_clips(self._join(scores, window_tokens, windows))
        timed = self.time_embedded(hidden, windows)
        if timed is not None:
            timed = pad_clips(self._join(timed, window_tokens, windows))
        return EncodedAudio(pad_clips(clips), lengths, signals, timed)

    def time_embedded(self, hidden: torch.Tensor, windows: Sequence[int]) -> torch.Tensor | None:
        """The window rows as the projector takes them, when that differs from the encoder's
        output (Music Flamingo adds a time embedding); None for AF3."""
        return None

    def clip_windows(
        self, window_tokens: Sequence[int], placeholders: Sequence[int], method: Method | None
    ) -> list[int]:
        full = self.full_window_tokens()
        return group_windows(window_tokens, placeholders, full, lambda n: budget([n], method)[0])

    def full_window_tokens(self) -> int:
        """Tokens of a full 30 s window."""
        return int(self.tower.config.max_source_positions) // 2

    def _run_tower(self, features: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """``[windows, tokens, D]``: each window's tokens where compression applies."""
        output = self.tower(features, input_features_mask=frame_mask, return_dict=True)
        return output.last_hidden_state

    @staticmethod
    def _join(
        per_window: torch.Tensor, window_tokens: Sequence[int], windows: Sequence[int]
    ) -> list[torch.Tensor]:
        """Each clip's valid rows of its consecutive windows, concatenated in time order."""
        counts = list(window_tokens)
        clips, start = [], 0
        for count in windows:
            rows = [per_window[w, : counts[w]] for w in range(start, start + count)]
            clips.append(torch.cat(rows))
            start += count
        return clips


class AudioFlamingo3Pipeline(HFPipeline):
    """Audio Flamingo 3 with a bound compression method; clips up to 10 minutes.

    Plain-string prompts go into the processor's chat template as ``<sound>`` + text (the
    template always puts the sound first); a string that already holds ``<sound>`` is used
    as written.
    """

    name = "audioflamingo3"
    adapter_class = AudioFlamingo3Adapter

    def max_seconds(self) -> float:
        """The processor's ``max_audio_len``, in whole windows (it keeps only as many)."""
        limit = float(getattr(self.processor, "max_audio_len", MAX_SECONDS))
        window = self.window_samples() / SAMPLE_RATE
        return window * int(limit // window)

    def window_samples(self) -> int:
        extractor = self.processor.feature_extractor
        return int(SAMPLE_RATE * getattr(extractor, "chunk_length", 30))

    def windows(self, samples: Sequence[np.ndarray]) -> list[int]:
        """The processor's rule: ⌈duration / 30 s⌉ windows, at least one."""
        size = self.window_samples()
        return [max(1, math.ceil(len(s) / size)) for s in samples]

    def _too_long_hint(self) -> str:
        return "split it (the processor would otherwise keep only the first part)"
