"""The chunked decoding loss equals the dense cross-entropy, value and gradients."""
import pytest
import torch
import torch.nn.functional as F

from minicomp.xent import chunk_rows, chunked_cross_entropy, logits_of


def _inputs(n=37, D=16, V=50, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, D, generator=g, requires_grad=True)
    W = torch.randn(V, D, generator=g, requires_grad=True)
    b = torch.randn(V, generator=g, requires_grad=True) if bias else None
    t = torch.randint(0, V, (n,), generator=g)
    return h, W, b, t


@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("chunk", [1, 5, 36, 37, 1000])
def test_chunked_equals_dense_loss_and_gradients(chunk, softcap):
    h, W, b, t = _inputs()
    dense = F.cross_entropy(logits_of(h, W, b, softcap), t)
    g_dense = torch.autograd.grad(dense, (h, W, b))
    ours = chunked_cross_entropy(h, W, t, b, softcap, chunk=chunk)
    g_ours = torch.autograd.grad(ours, (h, W, b))
    torch.testing.assert_close(ours, dense, rtol=1e-6, atol=1e-6)
    for a, e in zip(g_ours, g_dense):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("grad", [True, False])
def test_the_logits_are_never_made_for_more_rows_than_a_chunk(monkeypatch, grad):
    h, W, b, t = _inputs()
    widths = []
    real = F.linear
    monkeypatch.setattr(F, "linear", lambda x, *a: widths.append(x.shape[0]) or real(x, *a))
    with torch.set_grad_enabled(grad):
        ours = chunked_cross_entropy(h, W, t, b, chunk=5)
        if grad:
            ours.backward()  # backward recomputes each chunk's logits, a chunk at a time too
    assert max(widths) == 5 and sum(widths) == h.shape[0] * (2 if grad else 1)
    torch.testing.assert_close(ours.detach(), F.cross_entropy(real(h, W, b), t).detach(), rtol=1e-6, atol=1e-6)


def test_softcap_and_bias_are_applied_not_dropped():
    h, W, b, t = _inputs()
    plain = chunked_cross_entropy(h, W, t, chunk=5)
    assert not torch.allclose(chunked_cross_entropy(h, W, t, b, chunk=5), plain)
    assert not torch.allclose(chunked_cross_entropy(h, W, t, softcap=1.0, chunk=5), plain)


def test_under_bf16_autocast_the_chunks_match_the_dense_autocast_computation():
    h, W, _, t = _inputs(n=24, V=40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dense = F.cross_entropy(logits_of(h, W), t)
        ours = chunked_cross_entropy(h, W, t, chunk=7)
    g_dense, g_ours = torch.autograd.grad(dense, (h, W)), torch.autograd.grad(ours, (h, W))
    torch.testing.assert_close(ours, dense, rtol=1e-5, atol=1e-5)  # bf16 logits in both: not the fp32 value
    assert not torch.allclose(ours, F.cross_entropy(logits_of(h, W), t), rtol=0, atol=1e-7)
    for a, e in zip(g_ours, g_dense):
        torch.testing.assert_close(a, e, rtol=2e-2, atol=2e-3)


def test_chunk_size_and_bad_shapes():
    assert chunk_rows(151_936) == 220  # 128 MiB of float32 logits at Qwen2.5's vocabulary
    assert chunk_rows(10**12) == 1
    h, W, _, t = _inputs()
    with pytest.raises(ValueError, match="hidden must be"):
        chunked_cross_entropy(h[None], W, t)
    with pytest.raises(ValueError, match="target"):
        chunked_cross_entropy(h, W, t[:-1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_chunked_equals_dense():
    h, W, b, t = (x.cuda() if x is not None else None for x in _inputs(n=300, D=64, V=1000))
    h, W = h.detach().requires_grad_(True), W.detach().requires_grad_(True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        dense = F.cross_entropy(logits_of(h, W), t)
        ours = chunked_cross_entropy(h, W, t, chunk=64)
    g_dense, g_ours = torch.autograd.grad(dense, (h, W)), torch.autograd.grad(ours, (h, W))
    torch.testing.assert_close(ours, dense, rtol=1e-5, atol=1e-5)
    for a, e in zip(g_ours, g_dense):
        torch.testing.assert_close(a, e, rtol=2e-2, atol=2e-3)
