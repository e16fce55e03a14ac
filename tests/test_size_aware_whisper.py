"""Size-aware attention on Whisper in PyTorch: the decoder's cross-attention gives each
compressed encoder row the weight of its frames (exactly s times the unnormalised weight, at
every decoding step; the uncompressed tail rows weigh 1), sizes all 1 change nothing, SDPA
and eager agree, the bias adds to a padding mask set before it, and kernels that take no
bias are refused. A tiny random ``WhisperForConditionalGeneration`` (transformers' real
class) decodes from compressed random encoder states."""

from __future__ import annotations

import pytest
import torch

import ltbm
from ltbm.backbones.hf.size_aware import (
    clip_log_sizes,
    cross_attention,
    cross_attention_bias,
    encoder_key_bias,
    language_model_attention,
)

transformers = pytest.importorskip("transformers")
from transformers.modeling_outputs import BaseModelOutput  # noqa: E402

WIDTH, TAIL, PROMPT = 32, 5, [100, 5, 6]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_thread):
    """Every test here runs single-threaded (see conftest)."""


def tiny_whisper(implementation: str) -> torch.nn.Module:
    config = transformers.WhisperConfig(
        vocab_size=120,
        num_mel_bins=80,
        encoder_layers=1,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        d_model=WIDTH,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_source_positions=1500,
        max_target_positions=64,
        decoder_start_token_id=100,
        pad_token_id=101,
        eos_token_id=102,
        bos_token_id=102,
        suppress_tokens=[],
        begin_suppress_tokens=[],
        attn_implementation=implementation,
    )
    torch.manual_seed(0)
    return transformers.WhisperForConditionalGeneration(config).eval()


@pytest.fixture(scope="module")
def eager():
    return tiny_whisper("eager")


@pytest.fixture(scope="module")
def sdpa(eager):
    model = tiny_whisper("sdpa")
    model.load_state_dict(eager.state_dict())
    return model


def decoder_rows(frames: int, method, seed: int = 0):
    """Rows Whisper's decoder gets from clips of ``frames`` encoder frames each: the
    compressed frames, then an uncompressed tail of TAIL rows; zero-padded to the widest.
    Returns the rows ``[C, width, D]``, each clip's row count and its slot sizes."""
    generator = torch.Generator().manual_seed(seed)
    counts = [frames] if isinstance(frames, int) else list(frames)
    states = torch.randn(len(counts), max(counts), WIDTH, generator=generator)
    states = states.cumsum(1) / 4  # slowly varying, as encoder frames are: merges vary
    compressed = method(states, torch.tensor(counts)) if method is not None else None
    rows, sizes = [], []
    for clip, count in enumerate(counts):
        kept = states[clip, :count] if compressed is None else None
        if compressed is not None:
            kept = compressed.tokens[clip, : int(compressed.lengths[clip])]
            plan = compressed.plan
            sizes.append(plan.sizes[clip][plan.slot_mask[clip]].double())
        else:
            sizes.append(torch.ones(count, dtype=torch.float64))
        tail = torch.randn(TAIL, WIDTH, generator=generator)
        rows.append(torch.cat([kept, tail]))
    width = max(r.shape[0] for r in rows)
    hidden = torch.zeros(len(rows), width, WIDTH)
    for clip, row in enumerate(rows):
        hidden[clip, : row.shape[0]] = row
    return hidden, [r.shape[0] for r in rows], sizes, compressed


def generate(model, hidden, steps: int = 3, bias=None, **extra):
    with torch.no_grad(), cross_attention_bias(model, bias):
        return model.generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
            decoder_input_ids=torch.tensor([PROMPT] * hidden.shape[0]),
            max_new_tokens=steps,
            min_new_tokens=steps,
            do_sample=False,
            return_dict_in_generate=True,
            **extra,
        )


def merging():
    return ltbm.get_method("ltbm", keep_ratio=0.25, window=2)


def test_the_cross_attention_gives_a_row_of_size_s_s_times_the_weight_at_every_step(eager):
    hidden, _, sizes, compressed = decoder_rows(60, merging())
    log_sizes = clip_log_sizes(compressed)
    assert log_sizes is not None and max(float(s.max()) for s in sizes) >= 3
    bias = encoder_key_bias(log_sizes, hidden.shape[1])
    output = generate(eager, hidden, bias=bias, output_attentions=True)
    # The same tokens, teacher-forced in one plain pass: layer 0's cross-attention queries
    # depend on the tokens only, so its rows are the unbiased weights of each step.
    with torch.no_grad():
        plain = eager(
            encoder_outputs=(hidden,),
            decoder_input_ids=output.sequences,
            output_attentions=True,
        ).cross_attentions[0]
    factors = torch.cat([sizes[0], torch.ones(TAIL, dtype=torch.float64)])[None]
    assert factors.shape[1] == hidden.shape[1]
    rows = [(0, len(PROMPT))] + [(len(PROMPT) + t - 1, len(PROMPT) + t) for t in (1, 2)]
    for step, (first, last) in enumerate(rows):
        biased = output.cross_attentions[step][0].double()
        reference = plain[:, :, first:last].double()
        ratio = biased / reference / factors[:, None, None, :]
        relative = (ratio / ratio.mean(dim=-1, keepdim=True) - 1).abs()
        assert float(relative.max()) < 1e-5  # exact up to float32 rounding
    unbiased = generate(eager, hidden, output_attentions=True)
    assert not torch.allclose(unbiased.cross_attentions[0][0], output.cross_attentions[0][0])
    assert not any(m._forward_pre_hooks for m in cross_attention(eager))


def test_only_the_cross_attention_is_hooked(eager):
    layers = eager.model.decoder.layers
    assert cross_attention(eager) == [layer.encoder_attn for layer in layers]
    assert all(layer.encoder_attn is not layer.self_attn for layer in layers)
    with pytest.raises(TypeError, match="language model's self-attention"):
        language_model_attention(torch.nn.Linear(2, 2))


@pytest.mark.parametrize(
    "method",
    [None, ltbm.get_method("prune", keep_ratio=0.25, scorer="norm")],
    ids=["none", "prune"],
)
def test_sizes_all_one_change_nothing_bit_for_bit(eager, method):
    hidden, _, _, compressed = decoder_rows(60, method)
    assert clip_log_sizes(compressed) is None  # so the backbone passes no bias at all
    with_option = generate(eager, hidden, bias=None, output_logits=True)
    without = generate(eager, hidden, output_logits=True)
    assert torch.equal(torch.stack(with_option.logits), torch.stack(without.logits))


def test_sdpa_and_eager_agree_under_the_bias(eager, sdpa):
    hidden, _, _, compressed = decoder_rows([60, 60], merging(), seed=3)
    bias = encoder_key_bias(clip_log_sizes(compressed), hidden.shape[1])
    scores = [
        torch.stack(generate(model, hidden, 4, bias, output_logits=True).logits)
        for model in (eager, sdpa)
    ]
    assert torch.allclose(scores[0], scores[1], atol=1e-5)
    plain = torch.stack(generate(sdpa, hidden, 4, output_logits=True).logits)
    assert not torch.allclose(scores[1], plain)


class PaddingMask:
    """What a Whisper backbone must do for clips of different row counts in one batch (the
    decoder gives its cross-attention no mask): a pre-hook that sets an additive mask over
    each clip's padding rows. Registered before the bias, so the bias adds to it."""

    def __init__(self, model, lengths, width):
        keep = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
        lowest = torch.finfo(torch.float32).min
        self.mask = torch.zeros(keep.shape).masked_fill(~keep, lowest)[:, None, None, :]
        self.handles = [
            m.register_forward_pre_hook(self.hook, with_kwargs=True) for m in cross_attention(model)
        ]

    def hook(self, module, args, kwargs):
        return args, {**kwargs, "attention_mask": self.mask}

    def remove(self):
        for handle in self.handles:
            handle.remove()


def test_the_bias_adds_to_a_padding_mask_and_follows_each_clip(eager):
    """Two clips of different lengths in one batch, padded and masked, under the bias, give
    each clip's logits as decoding it alone does."""
    method = merging()
    hidden, lengths, _, compressed = decoder_rows([60, 36], method, seed=5)
    assert lengths[0] != lengths[1]
    bias = encoder_key_bias(clip_log_sizes(compressed), hidden.shape[1])
    padding = PaddingMask(eager, lengths, hidden.shape[1])
    try:
        together = torch.stack(generate(eager, hidden, 4, bias, output_logits=True).logits)
    finally:
        padding.remove()
    for clip, length in enumerate(lengths):
        alone_bias = bias[clip : clip + 1, :length]
        alone = generate(eager, hidden[clip : clip + 1, :length], 4, alone_bias, output_logits=True)
        assert torch.allclose(torch.stack(alone.logits)[:, 0], together[:, clip], atol=1e-5)


def test_kernels_that_take_no_bias_are_refused(sdpa):
    config = sdpa.config
    original = config._attn_implementation
    config._attn_implementation_internal = "flash_attention_2"
    try:
        with pytest.raises(ValueError, match="'flash_attention_2' cannot take.*'sdpa' or 'eager'"):
            cross_attention_bias(sdpa, torch.zeros(1, 4)).__enter__()
    finally:
        config._attn_implementation_internal = original
