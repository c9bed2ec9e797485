import math

import numpy as np
import ot
import pytest
import torch

import minicomp as mc
from minicomp import align


def sinkhorn_float64(scores, prior, eps, n_iters):
    """Reference: plain (not log-domain) Sinkhorn in float64, SwAV-style, written out."""
    B, K = scores.shape
    u = torch.full((K,), 1.0 / K, dtype=torch.float64) if prior is None else prior.double() / prior.double().sum()
    Q = torch.exp((scores.double() - scores.double().max()) / eps)  # (B, K)
    for _ in range(n_iters):
        Q = Q / Q.sum(0, keepdim=True) * u  # columns -> prior
        Q = Q / Q.sum(1, keepdim=True) / B  # rows -> 1/B
    return Q / Q.sum(1, keepdim=True)


@pytest.mark.parametrize("with_prior", [False, True])
@pytest.mark.parametrize("n_iters", [1, 3, 10])
def test_balanced_matches_float64_reference(with_prior, n_iters):
    g = torch.Generator().manual_seed(n_iters)
    scores = torch.rand(16, 50, generator=g) * 2 - 1
    prior = torch.rand(50, generator=g) if with_prior else None
    ours = align.sinkhorn_knopp(scores, prior, eps=0.1, n_iters=n_iters)
    ref = sinkhorn_float64(scores, prior, 0.1, n_iters)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("with_prior", [False, True])
def test_balanced_converges_to_pot_solution(with_prior):
    g = torch.Generator().manual_seed(0)
    B, K, eps = 12, 30, 0.2
    scores = torch.rand(B, K, generator=g) * 2 - 1
    prior = torch.rand(K, generator=g) + 0.1 if with_prior else None
    u = torch.full((K,), 1 / K) if prior is None else prior / prior.sum()
    u64 = (u.double() / u.double().sum()).numpy()  # marginals must have equal mass in float64
    plan = ot.sinkhorn(np.full(B, 1 / B), u64, -scores.double().numpy(), eps,
                       numItermax=100000, stopThr=1e-10)  # (B, K), rows sum to 1/B
    plan = torch.from_numpy(plan)
    ours = align.sinkhorn_knopp(scores, prior, eps=eps, n_iters=2000)
    torch.testing.assert_close(ours.double(), B * plan, rtol=1e-4, atol=1e-6)


def test_marginals():
    g = torch.Generator().manual_seed(1)
    scores = torch.rand(32, 64, generator=g) * 2 - 1
    prior = torch.rand(64, generator=g)
    t = align.sinkhorn_knopp(scores, prior, eps=0.1, n_iters=3)
    torch.testing.assert_close(t.sum(1), torch.ones(32))
    t = align.sinkhorn_knopp(scores, prior, eps=0.1, n_iters=300)
    torch.testing.assert_close(t.mean(0), prior / prior.sum(), rtol=1e-4, atol=1e-6)  # column marginal = prior
    assert t.requires_grad is False


def test_official_equals_the_authors_formula_in_float64():
    g = torch.Generator().manual_seed(2)
    scores = torch.rand(8, 40, generator=g) * 0.8 - 0.4  # |cos| < 0.44: their float32 code does not overflow
    prior = torch.rand(40, generator=g)
    u = prior.double() / prior.double().sum()
    # their loop: multiply by the prior three times, renormalise each row
    q = torch.exp(scores.double() / 0.005)
    for _ in range(3):
        q = q * u
        q = q / q.sum(1, keepdim=True)
    ours = align.sinkhorn_knopp(scores, prior, eps=0.005, n_iters=3, mode="official")
    torch.testing.assert_close(ours.double(), q, rtol=1e-5, atol=1e-7)


def test_naive_float32_overflows_where_ours_stays_finite():
    scores = torch.tensor([[0.45, -1.0, 0.2]])
    assert torch.isinf(torch.exp(scores / 0.005)).any()  # exp(90) > float32 max
    for mode in align.MODES:
        t = align.sinkhorn_knopp(scores, torch.tensor([0.2, 0.3, 0.5]), mode=mode)
        assert torch.isfinite(t).all() and torch.allclose(t.sum(1), torch.ones(1))


@pytest.mark.parametrize("B,n_iters,modes", [(1, 3, align.MODES), (4096, 1, ("balanced",))], ids=["1-bf16", "4096"])
def test_stable_at_paper_scale(B, n_iters, modes):
    """151,936 words; one sample in bf16, and 4,096 at once where only the balanced mode sums over
    the batch (the official mode is row by row, as the first case tests)."""
    K = 151_936
    g = torch.Generator().manual_seed(3)
    scores = torch.ones(B, K)  # cosines at exactly +1, -1 and 0
    scores[:, 1::2] = -1.0
    scores[::2, ::3] = 0.0
    prior = torch.rand(K, generator=g)
    for mode in modes:
        t = align.sinkhorn_knopp(scores.bfloat16() if B == 1 else scores, prior, eps=0.005, n_iters=n_iters, mode=mode)
        assert t.dtype == torch.float32 and torch.isfinite(t).all()
        torch.testing.assert_close(t.sum(1), torch.ones(B), rtol=1e-4, atol=1e-4)
        del t


def test_loss_and_gradients_stable_at_vocabulary_scale():
    K, D = 151_936, 32
    g = torch.Generator().manual_seed(4)
    W = torch.randn(K, D, generator=g)
    vis = W[:4].clone().requires_grad_(True)  # cosines of exactly 1 with some prototypes
    txt = (-W[4:8]).clone().requires_grad_(True)
    protos = W.clone().requires_grad_(True)
    loss = align.alignment_loss(vis, txt, protos, prior=torch.rand(K, generator=g))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(vis.grad).all() and vis.grad.abs().sum() > 0
    assert txt.grad is None and protos.grad is None  # Eq. 8 and 10: gradient reaches vis only


def test_loss_prefers_matched_pairs():
    g = torch.Generator().manual_seed(5)
    W = torch.randn(500, 64, generator=g)
    txt = torch.randn(32, 64, generator=g)
    matched = align.alignment_loss(txt.clone(), txt, W, eps=0.05, temp=0.05)
    shuffled = align.alignment_loss(txt[torch.randperm(32, generator=g)], txt, W, eps=0.05, temp=0.05)
    assert matched < shuffled


@pytest.mark.parametrize("variant", align.VARIANTS)
def test_variants(variant):
    g = torch.Generator().manual_seed(6)
    W = torch.randn(100, 16, generator=g).requires_grad_(True)
    vis = torch.randn(8, 16, generator=g).requires_grad_(True)
    txt = torch.randn(8, 16, generator=g)
    loss = align.alignment_loss(vis, txt, W, prior=torch.rand(100, generator=g), eps=0.05, temp=0.05, variant=variant)
    loss.backward()
    assert torch.isfinite(loss) and vis.grad is not None
    assert (W.grad is not None) == (variant == "learnable")


@pytest.mark.parametrize("variant", align.VARIANTS)
def test_loss_under_cpu_bf16_autocast_runs_and_stays_near_float32(variant):
    """Under CPU autocast the score products run in bf16 while log_softmax stays float32, and CPU
    autocast leaves `torch.dot` alone (CUDA's casts it): the loss must still run, near float32."""
    g = torch.Generator().manual_seed(6)
    W = torch.randn(100, 16, generator=g)
    vis = torch.randn(8, 16, generator=g)
    txt = torch.randn(8, 16, generator=g)
    prior = torch.rand(100, generator=g)
    losses, grads = [], []
    for bf16 in (False, True):
        v = vis.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = align.alignment_loss(v, txt, W, prior=prior, eps=0.05, temp=0.05, variant=variant)
        loss.backward()
        losses.append(loss.float())
        grads.append(v.grad)
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-2, atol=0)
    assert torch.nn.functional.cosine_similarity(grads[0].flatten(), grads[1].flatten(), dim=0) > 0.999


def test_variant_targets_match_their_definitions():
    g = torch.Generator().manual_seed(7)
    W = torch.nn.functional.normalize(torch.randn(50, 8, generator=g), dim=-1)
    vis, txt = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    prior = torch.rand(50, generator=g)
    fv, ft = (torch.nn.functional.normalize(x, dim=-1) for x in (vis, txt))
    log_pv = torch.log_softmax(fv @ W.T / 0.1, -1)
    expect = {
        "sinkhorn": align.sinkhorn_knopp(ft @ W.T, prior, 0.1, 3),
        "no_prior": align.sinkhorn_knopp(ft @ W.T, None, 0.1, 3),
        "softmax": torch.softmax(ft @ W.T / 0.1, -1),
    }
    for variant, p_t in expect.items():
        loss = align.alignment_loss(vis, txt, W, prior, eps=0.1, temp=0.1, variant=variant)
        torch.testing.assert_close(loss, -(p_t * log_pv).sum(-1).mean())
    infonce = align.alignment_loss(vis, txt, W, eps=0.1, temp=0.1, variant="infonce")
    torch.testing.assert_close(infonce, torch.nn.functional.cross_entropy(fv @ ft.T / 0.1, torch.arange(4)))


def test_pooling():
    tokens = torch.arange(10.0).view(5, 2)  # image 0: rows 0-1 (grid 1x2), image 1: rows 2-4 (grid 3x1)
    packed = mc.Packed.from_list([tokens[:2], tokens[2:]], [(1, 2), (3, 1)])
    torch.testing.assert_close(align.pool_packed(packed), torch.stack([tokens[:2].mean(0), tokens[2:].mean(0)]))
    hidden = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]], dtype=torch.bool)
    torch.testing.assert_close(align.masked_mean(hidden, mask),
                               torch.stack([hidden[0, :2].mean(0), hidden[1, 1:].mean(0)]))
    with pytest.raises(ValueError, match=r"sample\(s\) \[1\] have no text tokens"):
        align.masked_mean(hidden, torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool))


def test_word_prior():
    counts = torch.tensor([0.0, 1.0, 3.0])
    torch.testing.assert_close(align.word_prior(counts), torch.tensor([1 / 7, 2 / 7, 4 / 7]))
    torch.testing.assert_close(align.word_prior(counts, smoothing=0.0), torch.tensor([0.0, 0.25, 0.75]))
    soft = align.word_prior(torch.tensor([10.0, 11.0, 100.0]), rule="softmax")
    assert soft.argmax() == 2 and 0.999 < soft.sum() < 1.001  # frequencies 0.09 … 0.83: still ordered,
    assert soft[2] / soft[0] == pytest.approx(math.exp((100 - 10) / 121 / 0.05), rel=1e-5)  # but soft
    with pytest.raises(ValueError, match="non-negative"):
        align.word_prior(torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="rule"):
        align.word_prior(counts, rule="zipf")


def test_bad_inputs():
    s = torch.rand(4, 10)
    with pytest.raises(ValueError, match=r"expected \(10,\)"):
        align.sinkhorn_knopp(s, prior=torch.ones(9))
    with pytest.raises(ValueError, match="non-negative"):
        align.sinkhorn_knopp(s, prior=-torch.ones(10))
    with pytest.raises(ValueError, match="all zeros"):
        align.sinkhorn_knopp(s, prior=torch.zeros(10))
    with pytest.raises(ValueError, match="eps must be > 0"):
        align.sinkhorn_knopp(s, eps=0.0)
    with pytest.raises(ValueError, match="mode"):
        align.sinkhorn_knopp(s, mode="fast")
    with pytest.raises(ValueError, match=r"\(B, K\)"):
        align.sinkhorn_knopp(torch.rand(10))
    W = torch.rand(10, 4)
    with pytest.raises(ValueError, match="vis and txt"):
        align.alignment_loss(torch.rand(3, 4), torch.rand(2, 4), W)
    with pytest.raises(ValueError, match=r"prototypes must be \(K, 4\)"):
        align.alignment_loss(torch.rand(3, 4), torch.rand(3, 4), torch.rand(10, 5))
    with pytest.raises(ValueError, match="variant"):
        align.alignment_loss(torch.rand(3, 4), torch.rand(3, 4), W, variant="dino")
    assert math.isfinite(align.alignment_loss(torch.rand(3, 4), torch.rand(3, 4), W).item())


def test_alignment_targets_are_the_losses_targets():
    g = torch.Generator().manual_seed(8)
    W = torch.randn(60, 8, generator=g) * 3  # not normalised: the function normalises
    txt = torch.randn(5, 8, generator=g)
    prior = torch.rand(60, generator=g)
    c_t = torch.nn.functional.normalize(txt, dim=-1) @ torch.nn.functional.normalize(W, dim=-1).T
    for variant, ref in {"sinkhorn": align.sinkhorn_knopp(c_t, prior, 0.1, 3),
                         "no_prior": align.sinkhorn_knopp(c_t, None, 0.1, 3),
                         "softmax": torch.softmax(c_t / 0.1, -1)}.items():
        torch.testing.assert_close(align.alignment_targets(txt, W, prior, eps=0.1, variant=variant), ref)
    with pytest.raises(ValueError, match="no prototype targets"):
        align.alignment_targets(txt, W, variant="infonce")


def test_softmax_prior_is_the_authors_rule_on_any_counts():
    """Their code: vocab_dist = counts.clamp(min=1) / counts.sum(), then (vocab_dist / 0.05).softmax(0),
    in float32 (written here from reading it, not copied)."""
    g = torch.Generator().manual_seed(0)
    for counts in (torch.randint(0, 50_000, (151_657,), generator=g).float(),  # their vocabulary size
                   torch.tensor([0.0, 0.0, 3.0]), (torch.rand(1000, generator=g) ** 8 * 1e6).floor()):
        ours = align.word_prior(counts, rule="softmax")
        for dtype, rtol in ((torch.float64, 1e-6), (torch.float32, 5e-4)):  # float32: their sums of 151,657
            f = counts.to(dtype).unsqueeze(1)  # (K, 1), as they hold it          terms round at about 1e-4
            theirs = ((f.clamp(min=1) / f.sum(dim=0, keepdim=True)) / 0.05).softmax(dim=0)[:, 0]
            torch.testing.assert_close(ours.double(), theirs.double(), rtol=rtol, atol=0)
    zipf = 1e7 / torch.arange(1, 151_658).double()  # a Zipfian caption set: nearly uniform all the same
    u = align.word_prior(zipf, rule="softmax")
    assert 1 < float(u.max() / u.min()) < 10  # e^1.6 here; softmax over raw counts: e^(2e8)
    with pytest.raises(ValueError, match="every count is zero"):
        align.word_prior(torch.zeros(4), rule="softmax")
