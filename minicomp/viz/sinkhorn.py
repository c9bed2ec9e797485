"""Figures for the alignment loss (chapter 04): Sinkhorn-Knopp assignments, their marginals and
convergence, and the authors' variant against the balanced one. Each returns arrays or a Figure."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from ..align import sinkhorn_knopp


def toy_scores(B: int = 8, K: int = 24, seed: int = 0, hub: float = 1.0) -> torch.Tensor:
    """Cosine scores (B, K) of B random features against K prototypes. The features share a
    common direction (weight `hub`), and prototype 0 points along it: a "hub" that is close to
    every feature, the way embeddings of frequent words are."""
    g = torch.Generator().manual_seed(seed)
    common = F.normalize(torch.randn(16, generator=g), dim=0)  # (16,)
    feats = F.normalize(F.normalize(torch.randn(B, 16, generator=g), dim=-1) + hub * common, dim=-1)  # (B, 16)
    protos = F.normalize(torch.randn(K, 16, generator=g), dim=-1)
    protos[0] = common
    return feats @ protos.T  # (B, K)


def zipf_prior(K: int, strength: float = 1.0) -> torch.Tensor:
    """u_k ∝ (k + 1)^(−strength): word-frequency-like; strength 0 is uniform. (K,)"""
    u = (torch.arange(K, dtype=torch.float64) + 1) ** (-strength)
    return (u / u.sum()).float()


def marginal_errors(scores: torch.Tensor, prior: torch.Tensor, eps: float, n_iters: int) -> np.ndarray:
    """L1 distance between the column marginal of the targets and the prior after 0 … n_iters
    balanced Sinkhorn iterations: (n_iters + 1,). One pass: from iteration 1 on, the targets are
    the algorithm's whole state (each iteration ends by normalising rows), so each further
    iteration restarts from ε·log(targets)."""
    u = prior / prior.sum()
    out = [(sinkhorn_knopp(scores, prior, eps, 0).mean(0) - u).abs().sum().item()]  # softmax(C / ε)
    t = sinkhorn_knopp(scores, prior, eps, 1)
    for i in range(n_iters):
        if i:
            t = sinkhorn_knopp(eps * t.log(), prior, eps, 1)
        out.append((t.mean(0) - u).abs().sum().item())
    return np.array(out)


def plot_sinkhorn(eps: float = 0.05, n_iters: int = 3, prior_strength: float = 1.0, mode: str = "balanced",
                  B: int = 8, K: int = 24, seed: int = 0):
    """Widget callback: the targets heatmap (B × K), with the prototypes' received mass against
    the prior (top) and each sample's row sum (right). Returns a Figure."""
    scores, prior = toy_scores(B, K, seed), zipf_prior(K, prior_strength)
    t = sinkhorn_knopp(scores, prior, eps, n_iters, mode)
    fig = plt.figure(figsize=(10.5, 5))
    gs = fig.add_gridspec(2, 3, width_ratios=(12, 1, 0.35), height_ratios=(1, 2.2), hspace=0.08, wspace=0.06)
    top, heat, side = fig.add_subplot(gs[0, 0]), fig.add_subplot(gs[1, 0]), fig.add_subplot(gs[1, 1])
    k = np.arange(K)
    top.bar(k, t.mean(0).numpy(), color="tab:blue", label="mass received (column mean)")
    top.step(k, prior.numpy(), where="mid", color="tab:red", label="prior u")
    top.set_xlim(-0.5, K - 0.5)
    top.set_xticks([])
    top.legend(fontsize=8, loc="upper right")
    top.set_title(f"{mode} Sinkhorn-Knopp: ε={eps:g}, {n_iters} iterations, prior strength {prior_strength:g}")
    im = heat.imshow(t.numpy(), aspect="auto", cmap="magma", vmin=0, vmax=1)
    heat.set(xlabel="prototype k (0 = the hub)", ylabel="sample b")
    fig.colorbar(im, cax=fig.add_subplot(gs[1, 2]), label="target mass")
    side.barh(np.arange(B), t.sum(1).numpy(), color="tab:gray")
    side.set(xlim=(0, 1.2), yticks=[], xlabel="row sum")
    side.invert_yaxis()
    return fig


def plot_sinkhorn_convergence(eps_values=(0.02, 0.05, 0.2), n_iters: int = 30, prior_strength: float = 1.0,
                              B: int = 8, K: int = 24, seed: int = 0):
    """Column-marginal error against iterations, one line per ε. Returns a Figure."""
    scores, prior = toy_scores(B, K, seed), zipf_prior(K, prior_strength)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for eps in eps_values:
        ax.semilogy(marginal_errors(scores, prior, eps, n_iters) + 1e-12, "o-", ms=3, label=f"ε = {eps:g}")
    ax.set(xlabel="iteration", ylabel="‖column marginal − prior‖₁", title="Sinkhorn-Knopp converges; smaller ε is slower")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_modes(eps: float = 0.05, n_iters: int = 3, prior_strength: float = 1.0, B: int = 8, K: int = 24,
               seed: int = 0):
    """softmax(C/ε), the authors' variant and balanced Sinkhorn-Knopp on the same scores."""
    scores, prior = toy_scores(B, K, seed), zipf_prior(K, prior_strength)
    panels = {"softmax(C / ε)": torch.softmax(scores / eps, -1),
              "official: softmax(C/ε + n·log u)": sinkhorn_knopp(scores, prior, eps, n_iters, "official"),
              "balanced (Eq. 9)": sinkhorn_knopp(scores, prior, eps, n_iters, "balanced")}
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 3.6), sharey=True, layout="constrained")
    for ax, (name, t) in zip(axes, panels.items()):
        im = ax.imshow(t.numpy(), aspect="auto", cmap="magma", vmin=0, vmax=1)
        ax.set(title=f"{name}\nhub gets {t[:, 0].mean().item():.1%} of the mass", xlabel="prototype k")
    axes[0].set_ylabel("sample b")
    fig.colorbar(im, ax=axes, fraction=0.03, label="target mass")
    return fig
