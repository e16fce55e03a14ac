"""Placeholder bookkeeping: one run of audio placeholder tokens per clip in the prompt ids.

Every transformers audio LLM marks where a clip's audio embeddings go with a run of one
placeholder token; the processor writes N copies, ltbm rewrites each run to K copies and
scatters the K projected audio rows into them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ltbm.core.syncs import host_list


def placeholder_runs(ids: Sequence[int], token_id: int) -> list[tuple[int, int]]:
    """``(start, length)`` of every run of ``token_id`` in one row of ids."""
    runs: list[tuple[int, int]] = []
    start = None
    for position, token in enumerate([*ids, None]):
        if token == token_id and start is None:
            start = position
        elif token != token_id and start is not None:
            runs.append((start, position - start))
            start = None
    return runs


def unpadded_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[list[int]]:
    """The real (unpadded) ids of every row, whichever side the padding is on (read once,
    on the host where the processor left them)."""
    ids, masks = host_list(input_ids), host_list(attention_mask)
    return [
        [token for token, real in zip(row, mask, strict=True) if real]
        for row, mask in zip(ids, masks, strict=True)
    ]


def clip_runs(input_ids: torch.Tensor, attention_mask: torch.Tensor, token_id: int) -> list[int]:
    """Length of every placeholder run, in clip order (row by row, left to right)."""
    return [
        length
        for row in unpadded_rows(input_ids, attention_mask)
        for _, length in placeholder_runs(row, token_id)
    ]


def pad_token_id(tokenizer: object) -> int:
    """The id that fills the padding of rewritten prompts: the tokenizer's pad token, else its
    end-of-sequence token (many LLM tokenizers have no pad), else 0. The pipeline and the
    drop-in pad alike with it, and ``generate`` gets it as ``pad_token_id``."""
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    return int(pad if pad is not None else 0)


def resize_placeholder_runs(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_id: int,
    counts: Sequence[int],
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewrite every clip's run of placeholders to ``counts[c]`` copies, and left-pad.

    Left padding is what batched generation needs: every row's last real token sits at the
    end, where the first new token is predicted."""
    rows: list[list[int]] = []
    clip = 0
    for ids in unpadded_rows(input_ids, attention_mask):
        new: list[int] = []
        position = 0
        for start, length in placeholder_runs(ids, token_id):
            new += ids[position:start] + [token_id] * counts[clip]
            position = start + length
            clip += 1
        rows.append(new + ids[position:])
    if clip != len(counts):
        raise RuntimeError(f"found {clip} placeholder runs for {len(counts)} clips")
    width = max(len(r) for r in rows)
    ids_out = torch.full((len(rows), width), pad_id, dtype=input_ids.dtype)
    mask_out = torch.zeros((len(rows), width), dtype=attention_mask.dtype)
    for index, row in enumerate(rows):
        if row:
            ids_out[index, width - len(row) :] = torch.tensor(row, dtype=input_ids.dtype)
            mask_out[index, width - len(row) :] = 1
    return ids_out, mask_out


def merge_audio_embeddings(
    embedding: nn.Module, input_ids: torch.Tensor, token_id: int, audio: torch.Tensor
) -> torch.Tensor:
    """Text embeddings of ``input_ids`` with the placeholder positions replaced, in order, by
    the rows of ``audio [sum K, H]``: what the models' ``masked_scatter`` does, with the
    positions found on the host (where the prompt ids are), so the device is not asked how
    many there are."""
    ids = host_list(input_ids)
    width = input_ids.shape[1]
    positions = [
        row * width + column
        for row, row_ids in enumerate(ids)
        for column, token in enumerate(row_ids)
        if token == token_id
    ]
    if len(positions) != audio.shape[0]:
        raise ValueError(
            f"the prompts hold {len(positions)} audio placeholders but the compressed audio "
            f"has {audio.shape[0]} tokens"
        )
    device = embedding.weight.device
    embeds = embedding(input_ids.to(device, non_blocking=True))
    index = torch.tensor(positions, dtype=torch.long).to(device, non_blocking=True)
    flat = embeds.reshape(-1, embeds.shape[-1])
    merged = flat.index_copy(0, index, audio.to(embeds.device, embeds.dtype))
    return merged.view(embeds.shape)
