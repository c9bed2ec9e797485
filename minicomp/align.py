"""The alignment loss (paper Eq. 7–10): pooled visual and text features scored against the LLM's
word embeddings, with Sinkhorn-Knopp targets under a word-frequency prior.

    F_v, F_t = pool(visual tokens), pool(LLM hidden states of the caption, no image)  Eq. 7
    C_v, C_t = W F_v, W F_t      W: L2-normalised word embeddings, gradient stopped   Eq. 8
    p_t = Diag(u) exp(C_t / ε) Diag(v), rows renormalised (Sinkhorn-Knopp)            Eq. 9
    L_align = −Σ_k p_t log softmax(C_v / τ)                                           Eq. 10

Everything here is a pure function; only `vis` receives a gradient.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .packed import Packed

MODES = ("balanced", "official")
VARIANTS = ("sinkhorn", "no_prior", "learnable", "softmax", "infonce")  # paper Tab. 5b
PRIOR_RULES = ("frequency", "softmax")


def _chunks(n: int, size: int):
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _log_prior(prior: torch.Tensor | None, K: int, device) -> torch.Tensor:
    """Validated log of the normalised prior (K,) float32; uniform when None."""
    if prior is None:
        return torch.full((K,), -math.log(K), device=device)
    prior = torch.as_tensor(prior, device=device).float()
    if prior.shape != (K,):
        raise ValueError(f"prior has shape {tuple(prior.shape)}, expected ({K},) to match the {K} prototypes")
    if not torch.isfinite(prior).all() or (prior < 0).any():
        raise ValueError("prior must be finite and non-negative")
    total = prior.sum()
    if total <= 0:
        raise ValueError("prior is all zeros; expected some positive mass")
    return (prior / total).log()  # zero entries become -inf: those prototypes get no mass


def _row_logsumexp(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """logsumexp over the last dim of (B, K), a chunk of K at a time: (B,)."""
    return torch.stack([torch.logsumexp(x[:, s], dim=1) for s in _chunks(x.shape[1], chunk)], dim=1).logsumexp(1)


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, prior: torch.Tensor | None = None, eps: float = 0.005, n_iters: int = 3,
                   mode: str = "balanced", chunk: int = 16384) -> torch.Tensor:
    """Soft assignments of B samples to K prototypes: scores (B, K) -> targets (B, K) float32.

    Each row sums to 1. No gradient. Computed in float32 in the log domain, a chunk of K at a time,
    with one (B, K) buffer that becomes the output.
    - ``balanced`` (Eq. 9): entropic optimal transport between the samples (mass 1/B each) and
      the prototypes (mass given by `prior`, uniform if None): `n_iters` rounds of normalising the
      prototype columns to the prior, then the sample rows.
    - ``official``: the authors' code, which never normalises over the batch; it equals
      softmax(scores / ε + n_iters · log prior) per row.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be (B, K), got shape {tuple(scores.shape)}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    return _sinkhorn_(scores.detach().float() / eps, prior, n_iters, mode, chunk)


def _sinkhorn_(logq: torch.Tensor, prior, n_iters: int, mode: str, chunk: int) -> torch.Tensor:
    """`sinkhorn_knopp` on logq = scores / ε (B, K) float32, overwritten with the targets."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}, expected one of {MODES}")
    B, K = logq.shape
    log_u = _log_prior(prior, K, logq.device)  # (K,)
    if mode == "official":
        if n_iters:
            logq += n_iters * log_u
    else:
        for _ in range(n_iters):
            for s in _chunks(K, chunk):  # columns: prototype k receives mass u_k (Diag(u_W))
                shift = torch.logsumexp(logq[:, s], dim=0) - log_u[s] - math.log(B)  # (k,)
                logq[:, s] -= torch.where(torch.isinf(log_u[s]), math.inf, shift)
            logq -= _row_logsumexp(logq, chunk)[:, None]  # rows: each sample mass 1 (Diag(v), ×B)
    logq -= _row_logsumexp(logq, chunk)[:, None]  # exact row normalisation
    return logq.exp_()


def alignment_loss(vis: torch.Tensor, txt: torch.Tensor, prototypes: torch.Tensor,
                   prior: torch.Tensor | None = None, eps: float = 0.005, temp: float = 0.005,
                   n_iters: int = 3, mode: str = "balanced", variant: str = "sinkhorn") -> torch.Tensor:
    """L_align (Eq. 8–10) for pooled features vis (B, D) and txt (B, D), prototypes (K, D) -> scalar.

    Features and prototypes are L2-normalised; txt and the prototypes are detached, so only vis
    gets a gradient. `variant` selects the paper's ablations (Tab. 5b): ``sinkhorn`` (the
    method), ``no_prior`` (uniform prototype marginal), ``learnable`` (prototypes are a trained
    parameter, DINO-style: not detached, uniform marginal), ``softmax`` (targets softmax(C_t/ε)
    instead of Sinkhorn-Knopp), ``infonce`` (contrastive vis→txt over the batch, temperature τ).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r}, expected one of {VARIANTS}")
    if vis.ndim != 2 or vis.shape != txt.shape:
        raise ValueError(f"vis and txt must both be (B, D); got {tuple(vis.shape)} and {tuple(txt.shape)}")
    if prototypes.ndim != 2 or prototypes.shape[1] != vis.shape[1]:
        raise ValueError(f"prototypes must be (K, {vis.shape[1]}), got {tuple(prototypes.shape)}")
    if not temp > 0:
        raise ValueError(f"temp must be > 0, got {temp}")
    f_v = F.normalize(vis.float(), dim=-1)  # (B, D)
    f_t = F.normalize(txt.detach().float(), dim=-1)  # (B, D), stop-gradient to the LLM
    if variant == "infonce":
        logits = f_v @ f_t.T / temp  # (B, B): the matching caption is the positive
        return F.cross_entropy(logits, torch.arange(len(vis), device=vis.device))
    W = prototypes.float() if variant == "learnable" else prototypes.detach().float()  # stop-gradient, Eq. 8
    inv_norm = W.norm(dim=-1).clamp_min(1e-12).reciprocal()  # (K,): L2-normalise by scaling the scores
    p_t = alignment_targets(f_t, W.detach(), prior, eps, n_iters, mode, variant)  # (B, K), Eq. 9
    log_p_v = F.log_softmax(((f_v / temp) @ W.T) * inv_norm, dim=-1)  # log softmax(C_v / τ) (B, K), Eq. 10
    # Eq. 10, no (B, K) product buffer; one dtype for both (CPU autocast leaves dot alone: bf16 p_t, float32 log p_v)
    return -torch.dot(p_t.flatten().to(log_p_v.dtype), log_p_v.flatten()) / len(vis)


@torch.no_grad()
def alignment_targets(txt: torch.Tensor, prototypes: torch.Tensor, prior: torch.Tensor | None = None,
                      eps: float = 0.005, n_iters: int = 3, mode: str = "balanced",
                      variant: str = "sinkhorn") -> torch.Tensor:
    """The text side's targets p_t (B, K) of `alignment_loss` (Eq. 8–9), rows sum to 1, no gradient.

    txt (B, D) and prototypes (K, D) are L2-normalised here. Only `prior` is used by variant
    ``sinkhorn``; ``softmax`` gives softmax(C_t / ε); the others use a uniform prior.
    """
    if variant not in VARIANTS or variant == "infonce":
        raise ValueError(f"variant={variant!r} has no prototype targets; expected one of {VARIANTS[:-1]}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    W = prototypes.float()
    # C_t / ε (B, K), Eq. 8: the only (B, K) buffer, normalised by scaling instead of copying W (K, D)
    logq = ((F.normalize(txt.float(), dim=-1) / eps) @ W.T).mul_(W.norm(dim=-1).clamp_min(1e-12).reciprocal())
    if variant == "softmax":
        return torch.softmax(logq, dim=-1)
    return _sinkhorn_(logq, prior if variant == "sinkhorn" else None, n_iters, mode, 16384)  # in place


def pool_packed(packed: Packed) -> torch.Tensor:
    """F_v of Eq. 7: mean of each image's tokens in a Packed -> (B, D)."""
    lengths = torch.tensor(packed.lengths, device=packed.tokens.device)
    ids = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)  # (ΣN_i,)
    sums = packed.tokens.new_zeros(len(lengths), packed.tokens.shape[1]).index_add_(0, ids, packed.tokens)
    return sums / lengths[:, None].to(sums.dtype)


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """F_t of Eq. 7: mean of hidden (B, N, D) over positions where mask (B, N) is true -> (B, D)."""
    if hidden.shape[:2] != mask.shape:
        raise ValueError(f"mask {tuple(mask.shape)} does not match hidden {tuple(hidden.shape[:2])}")
    counts = mask.sum(1)
    if (counts == 0).any():
        raise ValueError(f"sample(s) {(counts == 0).nonzero().view(-1).tolist()} have no text tokens to pool")
    m = mask.to(hidden.dtype)[..., None]  # (B, N, 1)
    return (hidden * m).sum(1) / counts[:, None].to(hidden.dtype)


def word_prior(counts: torch.Tensor, rule: str = "frequency", smoothing: float = 1.0,
               temperature: float = 0.05) -> torch.Tensor:
    """The word prior u_W (K,) from token counts (K,) of the Stage-II captions.

    - ``frequency`` (default): (n_k + smoothing) / Σ (n + smoothing), add-`smoothing` relative
      frequency, so every token keeps some mass and balanced Sinkhorn stays well posed.
    - ``softmax``: the authors' rule, softmax(f / temperature) over the relative frequencies
      f_k = max(n_k, 1) / Σ n (clamped counts over the raw total). Every f_k is far below 1,
      so the prior is nearly uniform: its largest entry is at most e^(1/temperature) = e^20 times
      its smallest, and on a real caption set far less (about 3.2 on the authors' counts file).
    """
    counts = torch.as_tensor(counts).double()
    if counts.ndim != 1 or not torch.isfinite(counts).all() or (counts < 0).any():
        raise ValueError("counts must be a 1-D tensor of finite, non-negative token counts")
    if rule == "frequency":
        if smoothing < 0 or (smoothing == 0 and counts.sum() == 0):
            raise ValueError("smoothing must be >= 0, and > 0 when every count is zero")
        p = counts + smoothing
        return (p / p.sum()).float()
    if rule == "softmax":
        if counts.sum() == 0:
            raise ValueError("rule='softmax' divides by the total count: every count is zero")
        return torch.softmax(counts.clamp(min=1) / counts.sum() / temperature, dim=0).float()
    raise ValueError(f"rule={rule!r}, expected one of {PRIOR_RULES}")
