import pytest
import torch

from minicomp.attention import BACKENDS, packed_attention, resolve_backend
from minicomp.packed import cu_seqlens_from_lengths

LENGTHS = [5, 17, 5, 64, 1]


def make_qkv(dtype=torch.float32, device="cpu", requires_grad=False):
    g = torch.Generator().manual_seed(0)
    T = sum(LENGTHS)
    qkv = [torch.randn(T, 4, 16, generator=g).to(device, dtype).requires_grad_(requires_grad) for _ in range(3)]
    return qkv, cu_seqlens_from_lengths(torch.tensor(LENGTHS)).to(device)


def dense_block_diagonal(q, k, v, lengths):
    """An independent reference: one masked softmax over the whole packed sequence."""
    doc = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    mask = doc[:, None] == doc[None, :]
    s = torch.einsum("nhd,mhd->hnm", q.double(), k.double()) / q.shape[-1] ** 0.5
    p = s.masked_fill(~mask, float("-inf")).softmax(-1)
    return torch.einsum("hnm,mhd->nhd", p, v.double())


def test_reference_equals_dense_masked_softmax():
    (q, k, v), cu = make_qkv()
    out = packed_attention(q, k, v, cu, backend="reference")
    torch.testing.assert_close(out.double(), dense_block_diagonal(q, k, v, LENGTHS), rtol=1e-5, atol=1e-5)


def test_sdpa_matches_reference_forward_and_backward():
    backend = "sdpa"
    (q, k, v), cu = make_qkv(requires_grad=True)
    ref = packed_attention(q, k, v, cu, backend="reference")
    g_ref = torch.autograd.grad(ref.square().sum(), (q, k, v))
    out = packed_attention(q, k, v, cu, backend=backend)
    g_out = torch.autograd.grad(out.square().sum(), (q, k, v))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_flex_matches_reference_forward_on_cpu():
    # FlexAttention has no CPU backward; its gradients are checked on CUDA below.
    (q, k, v), cu = make_qkv()
    ref = packed_attention(q, k, v, cu, backend="reference")
    torch.testing.assert_close(packed_attention(q, k, v, cu, backend="flex"), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "sdpa", "flex"])
def test_no_attention_across_images(backend):
    (q, k, v), cu = make_qkv()
    out = packed_attention(q, k, v, cu, backend=backend)
    v2, k2 = v.clone(), k.clone()
    v2[5:22] += 10.0  # change image 1 only
    k2[5:22] -= 3.0
    out2 = packed_attention(q, k2, v2, cu, backend=backend)
    keep = torch.ones(out.shape[0], dtype=torch.bool)
    keep[5:22] = False
    torch.testing.assert_close(out2[keep], out[keep], rtol=0, atol=0)
    assert not torch.allclose(out2[~keep], out[~keep])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["sdpa", "flex", "varlen", "flash_attn"])
def test_cuda_backends_match_reference(backend):
    if backend == "flash_attn":
        pytest.importorskip("flash_attn")
    (q, k, v), cu = make_qkv(dtype=torch.bfloat16, device="cuda", requires_grad=True)
    ref = packed_attention(q.float(), k.float(), v.float(), cu, backend="reference")
    g_ref = torch.autograd.grad(ref.square().sum(), (q, k, v))
    out = packed_attention(q, k, v, cu, backend=backend)
    g_out = torch.autograd.grad(out.float().square().sum(), (q, k, v))
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a.float(), b.float(), rtol=5e-2, atol=5e-2)


def test_auto_is_sdpa_on_cpu_and_bad_inputs():
    (q, k, v), cu = make_qkv()
    assert resolve_backend("auto", q) == "sdpa"
    assert set(BACKENDS) >= {"reference", "sdpa", "flex", "varlen", "flash_attn"}
    with pytest.raises(ValueError, match="not one of"):
        packed_attention(q, k, v, cu, backend="magic")
    with pytest.raises(ValueError, match="cu_seqlens ends at"):
        packed_attention(q, k, v, cu[:-1])
    with pytest.raises(ValueError, match="must all be"):
        packed_attention(q, k[:-1], v, cu)
