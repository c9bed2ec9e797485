import pytest
import torch
from timm.layers import resample_abs_pos_embed

from minicomp import pos_embed as pe


@pytest.mark.parametrize("prefix", [0, 1, 5])
def test_identity_at_source_grid(prefix):
    ape = torch.randn(1, prefix + 6 * 9, 16)
    out = pe.resample_ape(ape, (6, 9), src_grid=(6, 9), num_prefix_tokens=prefix)
    torch.testing.assert_close(out, ape, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("target", [(4, 4), (10, 3), (17, 29)])
def test_matches_timm_with_prefix_and_rectangular_source(mode, target):
    ape = torch.randn(1, 1 + 7 * 5, 32)
    ours = pe.resample_ape(ape, target, src_grid=(7, 5), num_prefix_tokens=1, mode=mode)
    ref = resample_abs_pos_embed(ape, list(target), [7, 5], num_prefix_tokens=1, interpolation=mode, antialias=False)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    assert ours.shape == (1, 1 + target[0] * target[1], 32)
    torch.testing.assert_close(ours[:, :1], ape[:, :1])  # prefix rows untouched


def test_bilinear_upsampling_keeps_corner_embeddings_row_major():
    # A linear ramp along columns stays a ramp: row-major layout is preserved.
    h0, w0 = 4, 4
    ramp = torch.arange(w0, dtype=torch.float32).repeat(h0).view(1, h0 * w0, 1)
    out = pe.resample_ape(ramp, (4, 8), mode="bilinear").view(4, 8)
    assert torch.all(out[:, 1:] >= out[:, :-1])  # increasing along each row
    torch.testing.assert_close(out[0], out[3])  # constant down each column


def test_window_order_and_legacy_permutation():
    order = pe.window_order(4, 4)
    assert order.tolist() == [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]
    perm = pe.legacy_ape_permutation(4, 4)
    assert sorted(perm.tolist()) == list(range(16))
    # patch 2 (row 0, col 2) sits at window slot 4, so it receives APE row 4 = position (1, 0)
    assert perm[2] == 4
    fixed = (perm == torch.arange(16)).nonzero().view(-1).tolist()
    assert fixed == [0, 1, 6, 7, 8, 9, 14, 15]  # half the patches get another position's APE
    # on a wider grid almost every patch is displaced
    perm = pe.legacy_ape_permutation(24, 32)
    assert (perm == torch.arange(24 * 32)).float().mean() < 0.1


def test_bad_inputs():
    ape = torch.randn(1, 10, 8)
    with pytest.raises(ValueError, match="cannot infer"):
        pe.resample_ape(ape, (3, 3))
    with pytest.raises(ValueError, match="not one of"):
        pe.resample_ape(torch.randn(1, 9, 8), (3, 3), mode="nearest")
    with pytest.raises(ValueError, match="holds 10"):
        pe.resample_ape(ape, (3, 3), src_grid=(3, 3))
    with pytest.raises(ValueError, match="not divisible"):
        pe.window_order(3, 4)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("src, target", [((7, 5), (17, 29)), ((16, 16), (38, 12)), ((16, 16), (4, 6)), ((6, 9), (6, 9))])
def test_matmul_resampling_equals_timm_to_float_rounding(mode, src, target):
    ape = torch.randn(1, 2 + src[0] * src[1], 24)
    ref = resample_abs_pos_embed(ape, list(target), list(src), num_prefix_tokens=2, interpolation=mode, antialias=False)
    ours = pe.resample_ape_matmul(ape, target, src, 2, mode)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours[:, :2], ape[:, :2], rtol=0, atol=0)
    g = torch.randn_like(ref)  # the same linear map backwards: equal gradients
    a, b = ape.clone().requires_grad_(True), ape.clone().requires_grad_(True)
    (pe.resample_ape_matmul(a, target, src, 2, mode) * g).sum().backward()
    (resample_abs_pos_embed(b, list(target), list(src), num_prefix_tokens=2, interpolation=mode, antialias=False) * g).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5)
    op = pe.axis_operator(src[0], target[0], mode)
    torch.testing.assert_close(op.sum(1), torch.ones(target[0], dtype=torch.float64))  # rows of weights sum to 1


def test_matmul_resampling_falls_back_to_timm_for_antialias_and_checks_the_same_inputs():
    ape = torch.randn(1, 16, 8)
    ref = pe.resample_ape(ape, (6, 3), antialias=True)
    torch.testing.assert_close(pe.resample_ape_matmul(ape, (6, 3), antialias=True), ref, rtol=0, atol=0)
    with pytest.raises(ValueError, match="not one of"):
        pe.resample_ape_matmul(ape, (3, 3), mode="nearest")
    with pytest.raises(ValueError, match="holds 16"):
        pe.resample_ape_matmul(ape, (3, 3), src_grid=(3, 3))


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("src, target", [((7, 5), (17, 29)), ((8, 8), (24, 9)), ((16, 16), (4, 6))])
def test_matmul_backward_keeps_timms_forward_bits_and_its_gradient(mode, src, target):
    ape = torch.randn(1, 2 + src[0] * src[1], 24)
    g = torch.randn(1, 2 + target[0] * target[1], 24)
    a, b = ape.clone().requires_grad_(True), ape.clone().requires_grad_(True)
    ours = pe.resample_ape_matmul_backward(a, target, src, 2, mode)
    ref = resample_abs_pos_embed(b, list(target), list(src), num_prefix_tokens=2, interpolation=mode, antialias=False)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)  # the forward is timm's, bit for bit
    assert "ResampleAPE" in type(ours.grad_fn).__name__  # and the gradient is the matmuls', not timm's
    (ours * g).sum().backward()
    (ref * g).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.grad[:, :2], g[:, :2], rtol=0, atol=0)  # prefix rows pass straight through


def test_matmul_backward_falls_back_to_timm_for_identity_antialias_and_bad_input():
    ape = torch.randn(1, 16, 8, requires_grad=True)
    for grid, aa in (((4, 4), False), ((6, 3), True)):
        out = pe.resample_ape_matmul_backward(ape, grid, antialias=aa)
        assert "ResampleAPE" not in type(out.grad_fn).__name__
        torch.testing.assert_close(out, pe.resample_ape(ape, grid, antialias=aa), rtol=0, atol=0)
    with pytest.raises(ValueError, match="not one of"):
        pe.resample_ape_matmul_backward(ape, (3, 3), mode="nearest")
    with pytest.raises(ValueError, match="holds 16"):
        pe.resample_ape_matmul_backward(ape, (3, 3), src_grid=(3, 3))
