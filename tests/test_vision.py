import pytest
import timm
import torch

import minicomp as mc
from minicomp.pos_embed import legacy_ape_permutation, resample_ape

FAMILIES = [
    "vit_so400m_patch14_siglip_384",   # SigLIP, 384 px: its conv ignores the last 6 pixels
    "vit_base_patch16_siglip_224",
    "vit_large_patch14_dinov2",        # class token with an APE row
    "vit_small_patch14_reg4_dinov2",   # class + 4 registers, APE on patches only
    "aimv2_large_patch14_336",         # RMSNorm, SwiGLU, norm in the patch embedding
    "vit_large_patch14_clip_336",      # norm_pre, quick-GELU
]


@pytest.mark.parametrize("name", FAMILIES)
def test_rope_off_reproduces_timm_forward_features(name):
    torch.manual_seed(0)
    vit = timm.create_model(name, pretrained=False, depth=2).eval()
    enc = mc.CRoPEViT.from_timm(vit, rope=False)
    _, H, W = vit.pretrained_cfg["input_size"]
    x = torch.randn(1, 3, H, W)
    h, w = vit.patch_embed.grid_size
    p = enc.patch_size
    with torch.no_grad():
        ref = vit.forward_features(x)[0]  # (P + N, D)
        out = enc([x[0, :, :h * p, :w * p]])  # the pixels timm's patch conv actually sees
    P = vit.num_prefix_tokens
    torch.testing.assert_close(out.tokens, ref[P:], rtol=1e-5, atol=1e-5)
    assert out.grid_hw.tolist() == [[h, w]]
    if P:
        torch.testing.assert_close(out.prefix[0], ref[:P], rtol=1e-5, atol=1e-5)
    else:
        assert out.prefix is None


def test_shares_weights_and_uses_timm_names(small_vit):
    vit = small_vit()
    enc = mc.CRoPEViT.from_timm(vit)
    assert enc.blocks is vit.blocks and enc.pos_embed is vit.pos_embed
    timm_keys = set(vit.state_dict())
    assert set(enc.state_dict()) <= timm_keys
    assert {k for k in timm_keys if not k.startswith(("head", "fc_norm", "attn_pool"))} == set(enc.state_dict())


SIZES = [(64, 64), (24, 96), (96, 24), (40, 56), (64, 64), (8, 8)]


@pytest.mark.parametrize("backend", ["reference", "sdpa", "flex"])
@pytest.mark.parametrize("prefix_tokens", ["keep", "drop"])
def test_packed_equals_one_by_one(small_vit, rand_images, backend, prefix_tokens):
    enc = mc.CRoPEViT.from_timm(small_vit(), rope=True, attn_backend=backend, prefix_tokens=prefix_tokens)
    images = rand_images(SIZES)
    with torch.no_grad():
        packed = enc(images)
        alone = [enc([img]) for img in images]
    assert packed.grid_hw.tolist() == [[h // 8, w // 8] for h, w in SIZES]
    assert packed.cu_seqlens.tolist() == [0, 64, 100, 136, 171, 235, 236]
    for i, (t, a) in enumerate(zip(packed.split(), alone)):
        torch.testing.assert_close(t, a.tokens, rtol=1e-5, atol=1e-5, msg=f"image {i}")
        if prefix_tokens == "keep":
            torch.testing.assert_close(packed.prefix[i], a.prefix[0], rtol=1e-5, atol=1e-5)
    assert (packed.prefix is None) == (prefix_tokens == "drop")


def test_backends_agree_on_a_packed_batch(small_vit, rand_images):
    enc = mc.CRoPEViT.from_timm(small_vit(), attn_backend="reference")
    images = rand_images(SIZES)
    with torch.no_grad():
        ref = enc(images).tokens
        for backend in ("sdpa", "flex"):
            enc.attn_backend = backend
            torch.testing.assert_close(enc(images).tokens, ref, rtol=1e-5, atol=1e-5)


def test_rope_changes_output_except_on_a_single_patch(small_vit, rand_images):
    vit = small_vit(reg_tokens=0, class_token=False, global_pool="avg")
    with torch.no_grad():  # sharpen attention; at timm's init it is almost uniform
        for blk in vit.blocks:
            blk.attn.qkv.weight.mul_(20)
    on, off = mc.CRoPEViT.from_timm(vit, rope=True), mc.CRoPEViT.from_timm(vit, rope=False)
    with torch.no_grad():
        img = rand_images([(32, 48)])
        assert not torch.allclose(on(img).tokens, off(img).tokens, atol=1e-3)
        one = rand_images([(8, 8)])  # position (0, 0): every rotation is the identity
        torch.testing.assert_close(on(one).tokens, off(one).tokens, rtol=0, atol=0)


def test_ape_is_resampled_to_each_grid(small_vit, rand_images):
    # With no blocks the encoder outputs patch_embed + APE: check the APE part by hand.
    vit = small_vit(depth=1, reg_tokens=0, class_token=False, global_pool="avg")  # norm is Identity
    enc = mc.CRoPEViT.from_timm(vit, ape_mode="bilinear", prefix_tokens="drop")
    enc.blocks = torch.nn.Sequential()
    img = rand_images([(48, 96)])[0]
    with torch.no_grad():
        out = enc([img]).tokens
        patches = vit.patch_embed.proj(img[None]).flatten(2).transpose(1, 2)[0]  # (N, D)
        ape = resample_ape(vit.pos_embed, (6, 12), (8, 8), 0, "bilinear")[0]
        torch.testing.assert_close(out, patches + ape)
        enc.legacy_ape_order = True
        legacy = enc([img]).tokens
        torch.testing.assert_close(legacy, patches + ape[legacy_ape_permutation(6, 12)])


@pytest.mark.parametrize("prefix_tokens", ["keep", "drop"])
def test_gradients_reach_every_trainable_parameter(small_vit, rand_images, prefix_tokens):
    enc = mc.CRoPEViT.from_timm(small_vit(), prefix_tokens=prefix_tokens).train()
    out = enc(rand_images([(32, 48), (64, 16)]))
    loss = out.tokens.square().mean() + (out.prefix.square().mean() if out.prefix is not None else 0)
    loss.backward()
    trainable = [(n, p) for n, p in enc.named_parameters() if p.requires_grad]
    missing = [n for n, p in trainable if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    frozen = {n for n, p in enc.named_parameters() if not p.requires_grad}
    assert frozen == (set() if prefix_tokens == "keep" else {"cls_token", "reg_token"})


def test_ape_gradient_on_cpu_goes_through_the_matmuls_and_equals_timms(small_vit, rand_images, monkeypatch):
    """On a CPU the APE is resampled by timm and differentiated by `resample_ape_matmul_backward`:
    the tokens are the same bits as with timm's own autograd, the APE's gradient equal to rounding."""
    import minicomp.pos_embed as pe
    import minicomp.vision as vision

    images = rand_images([(32, 48), (64, 16), (48, 48)])
    grads, tokens, used = [], [], []

    def traced(*args, **kwargs):
        out = pe.resample_ape_matmul_backward(*args, **kwargs)
        used.append("ResampleAPE" in type(out.grad_fn).__name__)
        return out

    for resample in (traced, pe.resample_ape):
        monkeypatch.setattr(vision, "resample_ape_matmul_backward", resample)
        torch.manual_seed(0)
        enc = mc.CRoPEViT.from_timm(small_vit()).train()
        out = enc(images)
        out.tokens.square().mean().backward()
        grads.append(enc.pos_embed.grad)
        tokens.append(out.tokens.detach())
    assert used and all(used)
    torch.testing.assert_close(tokens[0], tokens[1], rtol=0, atol=0)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_drop_path_drops_whole_images_independently(small_vit, rand_images):
    vit = small_vit(depth=1, drop_path_rate=0.0)
    enc = mc.CRoPEViT.from_timm(vit, prefix_tokens="drop")
    images = rand_images([(16, 16)] * 64)
    with torch.no_grad():
        clean = enc.eval()(images).split()
        for blk in enc.blocks:  # only the MLP branch may drop, so we can tell which image lost it
            blk.drop_path2 = timm.layers.DropPath(0.5, scale_by_keep=False)  # kept = unchanged
        torch.manual_seed(0)
        noisy = enc.train()(images).split()
    changed = torch.tensor([not torch.allclose(a, b, atol=1e-6) for a, b in zip(clean, noisy)])
    assert 0 < changed.sum() < len(images)  # some images dropped, not all: per image, not per batch


def test_grad_checkpointing_gives_same_gradients(small_vit, rand_images):
    images = rand_images([(32, 48), (64, 16)])
    grads = []
    for ckpt in (False, True):
        enc = mc.CRoPEViT.from_timm(small_vit()).train()
        enc.set_grad_checkpointing(ckpt)
        enc(images).tokens.sum().backward()
        grads.append(enc.blocks[0].attn.qkv.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_bad_inputs_name_the_image(small_vit):
    enc = mc.CRoPEViT.from_timm(small_vit(), max_tokens=64)
    ok = torch.randn(3, 16, 16)
    with pytest.raises(ValueError, match="empty list"):
        enc([])
    with pytest.raises(ValueError, match="image 1: size 20x16 is not a positive multiple of the patch size 8"):
        enc([ok, torch.randn(3, 20, 16)])
    with pytest.raises(ValueError, match="image 0: has 1 channels, expected 3"):
        enc([torch.randn(1, 16, 16)])
    with pytest.raises(ValueError, match=r"image 2: expected a \(C, H, W\) tensor"):
        enc([ok, ok, torch.randn(16, 16)])
    with pytest.raises(ValueError, match="image 1: 9x9 = 81 patches exceeds max_tokens=64"):
        enc([ok, torch.randn(3, 72, 72)])
    with pytest.raises(ValueError, match="not one tensor"):
        enc(torch.randn(2, 3, 16, 16))
    enc.legacy_ape_order = True
    with pytest.raises(ValueError, match="image 0: grid 3x2 must be even"):
        enc([torch.randn(3, 24, 16)])
    with pytest.raises(ValueError, match="prefix_tokens"):
        mc.CRoPEViT.from_timm(small_vit(), prefix_tokens="first")
    with pytest.raises(ValueError, match="attn_backend"):
        mc.CRoPEViT.from_timm(small_vit(), attn_backend="fast")


def test_rejects_models_it_cannot_wrap(small_vit):
    with pytest.raises(TypeError, match="not a timm VisionTransformer"):
        mc.CRoPEViT.from_timm(torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match="no learned absolute position embedding"):
        mc.CRoPEViT.from_timm(small_vit(pos_embed="none"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_encoder_equals_cpu_encoder(small_vit, rand_images, monkeypatch):
    """On CUDA the APE is resampled by matmuls (pos_embed.resample_ape_matmul): same numbers in fp32.
    TF32 off: on an H200, cuDNN's TF32 patch-embedding conv put 1e-3 errors on the 1-patch image."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    enc = mc.CRoPEViT.from_timm(small_vit(), rope=True, attn_backend="sdpa")
    images = rand_images(SIZES)
    with torch.no_grad():
        cpu = enc(images).tokens
        gpu = enc.cuda()([x.cuda() for x in images]).tokens.cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["vit_base_patch16_siglip_224", "vit_large_patch14_dinov2"])
def test_ape_off_equals_a_zero_ape_and_freezes_it(name):
    """ape=False (Tab. 5a's RoPE-2D alone) is the same encoder with the APE zeroed: patch and
    class-token rows alike; its pos_embed is frozen, since nothing reads it."""
    torch.manual_seed(0)
    vit = timm.create_model(name, pretrained=False, depth=2, img_size=64).eval()
    p = vit.patch_embed.patch_size[0]
    images = [torch.randn(3, 3 * p, 5 * p), torch.randn(3, 4 * p, 2 * p)]
    off = mc.CRoPEViT.from_timm(vit, ape=False)
    assert not off.pos_embed.requires_grad and off.settings()["ape"] is False and "ape=False" in repr(off)
    with torch.no_grad():
        out = off(images)
        vit.pos_embed.zero_()
        ref = mc.CRoPEViT.from_timm(vit)(images)
    torch.testing.assert_close(out.tokens, ref.tokens)
    if ref.prefix is not None:
        torch.testing.assert_close(out.prefix, ref.prefix)
