import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from timm.layers import build_sincos2d_pos_embed  # noqa: E402

import minicomp as mc  # noqa: E402
from minicomp import viz  # noqa: E402


@pytest.fixture
def ape():
    return build_sincos2d_pos_embed((6, 6), 32).view(1, 36, 32)  # (1, h0*w0, D)


def test_ape_similarity_is_cosine_and_resampled(ape):
    sim = viz.ape_similarity(ape, (6, 6))
    assert sim.shape == (36, 36)
    torch.testing.assert_close(sim.diagonal(), torch.ones(36))
    m = viz.ape_similarity_map(ape, (3, 9), patch=(1, 4))
    assert m.shape == (3, 9) and m.argmax().item() == 1 * 9 + 4  # most similar to itself
    m = viz.ape_similarity_map(ape, (3, 9), patch=(10, 10))  # clamped into the grid
    assert m.argmax().item() == 3 * 9 - 1


def test_rope_relative_scores_peak_at_zero_offset():
    rel = viz.rope_relative_scores(head_dim=32, max_offset=5)
    assert rel.shape == (11, 11)
    assert rel[5, 5] == rel.max()
    torch.testing.assert_close(rel[5, 5], torch.tensor(1.0))  # unit q = k, no rotation
    torch.testing.assert_close(rel, rel.flip(0).flip(1))  # symmetric in ±offset for q = k


@pytest.mark.parametrize("offset", [(0, 0), (3, -2), (-4, 5)])
def test_rope_scores_at_offset_are_position_independent(offset):
    at = viz.rope_scores_at_offset(*offset, grid_hw=(5, 7), head_dim=32)
    assert at.shape == (5, 7)
    assert (at.max() - at.min()) < 1e-4
    # and the value is q·k after rotating by the offset alone
    other = viz.rope_scores_at_offset(offset[0] + 1, offset[1], grid_hw=(5, 7), head_dim=32)
    assert not torch.allclose(at, other)


def test_rope_spectrum():
    s = viz.rope_spectrum(64, 10000.0)
    assert s["frequency"].shape == (16,) and s["frequency"][0] == 1.0
    assert (s["wavelength"][1:] > s["wavelength"][:-1]).all()


def test_packed_attention_mask_is_block_diagonal():
    cu = torch.tensor([0, 2, 5], dtype=torch.int32)
    m = viz.packed_attention_mask(cu)
    assert m.tolist() == [[True, True, False, False, False], [True, True, False, False, False],
                          [False, False, True, True, True], [False, False, True, True, True],
                          [False, False, True, True, True]]


def test_legacy_ape_displacement():
    d = viz.legacy_ape_displacement(4, 4)
    assert d.shape == (4, 4)
    assert (d == 0).sum() == 8
    # patch (0, 2) sits at window slot 4, so it receives the APE of raster position 4 = (1, 0)
    torch.testing.assert_close(d[0, 2], torch.tensor(5.0).sqrt())


def test_figures_render(ape, small_vit, rand_images):
    enc = mc.CRoPEViT.from_timm(small_vit())
    images = rand_images([(16, 32), (24, 8)])
    with torch.no_grad():
        packed = enc(images)
    figs = [viz.plot_ape_similarity(ape, (4, 8), (1, 2), mode="bilinear"),
            viz.plot_ape_similarity_grid(ape, (3, 4)),
            viz.plot_rope_scores(100.0, 2, -1, head_dim=32, max_offset=4),
            viz.plot_rope_spectrum(32),
            viz.plot_packed_batch(images, packed, enc.patch_size),
            viz.plot_legacy_ape_order(4, 6),
            viz.plot_comp_overview()]
    for f in figs:
        assert isinstance(f, plt.Figure) and f.axes
        plt.close(f)


def test_sinkhorn_toy_problem_has_a_hub_that_softmax_collapses_onto():
    s = viz.toy_scores(B=8, K=24)
    assert s.shape == (8, 24) and (s.argmax(1) == 0).float().mean() >= 0.75  # the hub is most samples' best
    soft = torch.softmax(s / 0.05, -1)[:, 0].mean()
    bal = mc.sinkhorn_knopp(s, viz.zipf_prior(24, 0.0), eps=0.05, n_iters=50)[:, 0].mean()
    assert soft > 0.7 and abs(bal - 1 / 24) < 0.01  # balanced: the hub gets its prior share


def test_zipf_prior_and_marginal_errors():
    u = viz.zipf_prior(10, 1.0)
    torch.testing.assert_close(u.sum(), torch.tensor(1.0))
    assert (u[1:] < u[:-1]).all()
    torch.testing.assert_close(viz.zipf_prior(10, 0.0), torch.full((10,), 0.1))
    err = viz.marginal_errors(viz.toy_scores(), viz.zipf_prior(24), eps=0.2, n_iters=20)
    assert err.shape == (21,) and err[-1] < 1e-4 < err[0]


def test_sinkhorn_figures_render():
    for f in (viz.plot_sinkhorn(0.05, 3, 1.0), viz.plot_sinkhorn(0.1, 0, 0.0, mode="official"),
              viz.plot_sinkhorn_convergence(n_iters=5), viz.plot_modes()):
        assert isinstance(f, plt.Figure) and f.axes
        plt.close(f)


def test_marginal_errors_single_pass_equals_restarting():
    s, u = viz.toy_scores(), viz.zipf_prior(24)
    err = viz.marginal_errors(s, u, eps=0.1, n_iters=6)
    direct = [(mc.sinkhorn_knopp(s, u, 0.1, i).mean(0) - u).abs().sum().item() for i in range(7)]
    np.testing.assert_allclose(err, direct, rtol=1e-4, atol=1e-6)
