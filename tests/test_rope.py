import pytest
import torch
from transformers.models.qwen2_vl import modeling_qwen2_vl as qwen2_vl
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig

from minicomp import rope


def test_angle_layout_rows_then_cols():
    h, w, dh, theta = 3, 5, 16, 100.0
    ang = rope.rope_angles_2d(h, w, dh, theta)
    assert ang.shape == (h * w, dh // 2) and ang.dtype == torch.float32
    freqs = 1.0 / theta ** (torch.arange(0, dh // 2, 2).float() / (dh // 2))  # dh/4 per axis
    r, c = 2, 3
    torch.testing.assert_close(ang[r * w + c], torch.cat([r * freqs, c * freqs]))


def test_matches_transformers_qwen2vl_vision_rope():
    # Qwen2-VL's vision RoPE has the same layout as the CoMP authors' code.
    cfg = Qwen2VLVisionConfig(embed_dim=128, num_heads=2)  # head_dim 64, θ = 10000
    ref_rope = qwen2_vl.Qwen2VLVisionRotaryEmbedding(cfg)
    x = torch.randn(4 * 7, 2, 64)  # (N, heads, Dh)
    cos, sin = ref_rope(x, rope.grid_positions(4, 7))
    ref, _ = qwen2_vl.apply_rotary_pos_emb_vision(x, x, cos, sin)
    ours = rope.apply_rope_2d(x.transpose(0, 1), (4, 7)).transpose(0, 1)  # (heads, N, Dh) in, back to (N, heads, Dh)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


def test_scores_depend_only_on_relative_offset():
    h, w, dh = 6, 7, 32
    torch.manual_seed(0)
    q_vec, k_vec = torch.randn(dh), torch.randn(dh)
    q = rope.apply_rope_2d(q_vec.expand(h * w, dh), (h, w))
    k = rope.apply_rope_2d(k_vec.expand(h * w, dh), (h, w))
    scores = q @ k.T  # (N, N)
    pos = rope.grid_positions(h, w)
    offsets = (pos[:, None, :] - pos[None, :, :]).view(-1, 2)  # (N*N, 2)
    flat = scores.reshape(-1)
    seen = {}
    for off, s in zip(map(tuple, offsets.tolist()), flat.tolist()):
        seen.setdefault(off, []).append(s)
    assert len(seen) == (2 * h - 1) * (2 * w - 1)
    spread = max(max(v) - min(v) for v in seen.values())
    assert spread < 1e-4
    # and it is not trivially constant across offsets
    means = torch.tensor([sum(v) / len(v) for v in seen.values()])
    assert means.std() > 0.1


def test_preserves_norm_and_identity_at_origin():
    x = torch.randn(2, 5 * 4, 24)
    y = rope.apply_rope_2d(x, (5, 4))
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(y[:, 0], x[:, 0], rtol=0, atol=0)
    assert not torch.allclose(y[:, 1:], x[:, 1:])


def test_low_precision_input_computed_in_float32():
    x = torch.randn(64 * 64, 64)
    y32 = rope.apply_rope_2d(x, (64, 64))
    y16 = rope.apply_rope_2d(x.bfloat16(), (64, 64))
    assert y16.dtype == torch.bfloat16
    torch.testing.assert_close(y16.float(), y32, rtol=1e-2, atol=1e-2)


def test_angles_are_cached_per_grid():
    a = rope.rope_angles_2d(9, 11, 64, 10000.0)
    assert rope.rope_angles_2d(9, 11, 64, 10000.0) is a
    assert rope.rope_angles_2d(11, 9, 64, 10000.0) is not a


def test_bad_inputs():
    with pytest.raises(ValueError, match="divisible by 4"):
        rope.rope_frequencies(30)
    with pytest.raises(ValueError, match="expected h\\*w"):
        rope.apply_rope_2d(torch.randn(10, 16), (3, 4))
