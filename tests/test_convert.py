"""minicomp convert: the authors' CoMP-SigLIP and CoMP-DINOv2 layouts against our own reference of
their forward, written from their code (slimm/model/vision_encoder/comp_{siglip,dinov2}.py)."""
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers.models.qwen2_vl.modeling_qwen2_vl import apply_rotary_pos_emb_vision

import minicomp as mc
from minicomp.cli import main as cli_main
from minicomp.convert import convert, load_merger, read_checkpoint, save
from minicomp.pos_embed import window_order

P, D, HEADS, DEPTH, INTER, LLM, IMG = 4, 32, 4, 2, 48, 24, 16  # their image_size 16 -> a 4x4 APE grid
SIZES = [(16, 16), (8, 24), (24, 8), (16, 32), (8, 8)]  # native, several aspect ratios; the first at the APE grid


def _rand(g, *shape, scale=0.2):
    return torch.randn(*shape, generator=g) * scale


def their_checkpoint(layout, seed=0, prefix=""):
    """A random-weight state dict in their exact key layout and shapes, and their config.json."""
    g = torch.Generator().manual_seed(seed)
    s = {}
    lin = lambda name, o, i: s.update({f"{name}.weight": _rand(g, o, i), f"{name}.bias": _rand(g, o)})
    norm = lambda name: s.update({f"{name}.weight": 1 + _rand(g, D), f"{name}.bias": _rand(g, D)})
    n0 = (IMG // P) ** 2
    if layout == "comp-siglip":
        s["vision_model.embeddings.patch_embedding.weight"] = _rand(g, D, 3, P, P)
        s["vision_model.embeddings.patch_embedding.bias"] = _rand(g, D)
        s["vision_model.embeddings.position_embedding.weight"] = _rand(g, n0, D, scale=1.0)
        for i in range(DEPTH):
            a = f"vision_model.encoder.layers.{i}."
            for p in ("q_proj", "k_proj", "v_proj", "out_proj"):
                lin(a + "self_attn." + p, D, D)
            norm(a + "layer_norm1"), norm(a + "layer_norm2")
            lin(a + "mlp.fc1", INTER, D), lin(a + "mlp.fc2", D, INTER)
        config = {"model_type": "siglip_vision_model", "hidden_size": D, "intermediate_size": INTER,
                  "num_hidden_layers": DEPTH, "num_attention_heads": HEADS, "image_size": IMG, "patch_size": P,
                  "layer_norm_eps": 1e-6, "hidden_act": "gelu_pytorch_tanh", "use_rope": True,
                  "spatial_merge_size": 2, "llm_hidden_size": LLM}
    else:
        s["embeddings.patch_embeddings.projection.weight"] = _rand(g, D, 3, P, P)
        s["embeddings.patch_embeddings.projection.bias"] = _rand(g, D)
        s["embeddings.position_embeddings"] = _rand(g, 1, 1 + n0, D, scale=1.0)
        for i in range(DEPTH):
            a = f"encoder.layer.{i}."
            for p in ("query", "key", "value"):
                lin(a + "attention.attention." + p, D, D)
            lin(a + "attention.output.dense", D, D)
            norm(a + "norm1"), norm(a + "norm2")
            lin(a + "mlp.fc1", 4 * D, D), lin(a + "mlp.fc2", D, 4 * D)
            s[a + "layer_scale1.lambda1"], s[a + "layer_scale2.lambda1"] = 0.5 + _rand(g, D), 0.5 + _rand(g, D)
        norm("layernorm")
        config = {"model_type": "dinov2", "hidden_size": D, "num_hidden_layers": DEPTH, "num_attention_heads": HEADS,
                  "image_size": IMG, "patch_size": P, "mlp_ratio": 4, "layer_norm_eps": 1e-6, "hidden_act": "gelu",
                  "layerscale_value": 1.0, "qkv_bias": True, "use_swiglu_ffn": False, "use_rope": True,
                  "spatial_merge_size": 2, "llm_hidden_size": LLM}
    s["merger.ln_q.weight"], s["merger.ln_q.bias"] = 1 + _rand(g, D), _rand(g, D)
    lin("merger.mlp.0", 4 * D, 4 * D), lin("merger.mlp.2", LLM, 4 * D)
    return {prefix + k: v for k, v in s.items()}, config


# ---- our reference of their forward -------------------------------------------------------

def _window_patches(img):
    """(3, H, W) -> (N, 3·P·P): patches in 2×2 window order, each flattened channel-first, as
    their processor cuts them (pixel_values.view(-1, C, P, P) in their embeddings)."""
    h, w = img.shape[1] // P, img.shape[2] // P
    x = img.view(3, h // 2, 2, P, w // 2, 2, P).permute(1, 4, 2, 5, 0, 3, 6)  # (h/2, w/2, 2, 2, C, P, P)
    return x.reshape(h * w, 3 * P * P)


def _rope(h, w, dh):
    """cos, sin (N, dh) of their rot_pos_emb + apply_rotary_pos_emb_vision, in window order."""
    hp = torch.arange(h)[:, None].expand(h, w).reshape(h // 2, 2, w // 2, 2).permute(0, 2, 1, 3).flatten()
    wp = torch.arange(w)[None, :].expand(h, w).reshape(h // 2, 2, w // 2, 2).permute(0, 2, 1, 3).flatten()
    dim = dh // 2
    inv = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
    freqs = torch.cat([hp[:, None].float() * inv, wp[:, None].float() * inv], dim=1)  # (N, dh/2)
    emb = torch.cat([freqs, freqs], dim=1)  # (N, dh)
    return emb.cos(), emb.sin()


def _ape(table, h, w):
    """Their interpolate_pos_encoding: the raster-order table, bicubic, no antialias: (h·w, D)."""
    g0 = int(table.shape[0] ** 0.5)
    if (h, w) == (g0, g0):
        return table
    grid = table.reshape(1, g0, g0, -1).permute(0, 3, 1, 2)
    return F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(h * w, -1)


def their_forward(s, layout, images):
    """Their vision model + merger on a packed batch: (ΣN/4, LLM) merged tokens and the (ΣN, D)
    vision tokens in window order."""
    siglip = layout == "comp-siglip"
    L = (lambda x, n: F.linear(x, s[n + ".weight"], s[n + ".bias"]))
    LN = (lambda x, n: F.layer_norm(x, (D,), s[n + ".weight"], s[n + ".bias"], 1e-6))
    dh = D // HEADS
    vision = []
    for img in images:
        h, w = img.shape[1] // P, img.shape[2] // P
        if siglip:
            conv, table = "vision_model.embeddings.patch_embedding", s["vision_model.embeddings.position_embedding.weight"]
        else:
            conv, table = "embeddings.patch_embeddings.projection", s["embeddings.position_embeddings"][0, 1:]
        x = _window_patches(img) @ s[conv + ".weight"].reshape(D, -1).T + s[conv + ".bias"]
        x = x + _ape(table, h, w)  # raster-order APE onto window-order tokens
        cos, sin = _rope(h, w, dh)
        for i in range(DEPTH):
            if siglip:
                a = f"vision_model.encoder.layers.{i}."
                qn, kn, vn, on = (a + "self_attn." + p for p in ("q_proj", "k_proj", "v_proj", "out_proj"))
                n1, n2 = a + "layer_norm1", a + "layer_norm2"
            else:
                a = f"encoder.layer.{i}."
                qn, kn, vn = (a + "attention.attention." + p for p in ("query", "key", "value"))
                on, n1, n2 = a + "attention.output.dense", a + "norm1", a + "norm2"
            y = LN(x, n1)
            q, k, v = (L(y, n).view(-1, HEADS, dh) for n in (qn, kn, vn))
            q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)  # transformers' Qwen2-VL function, as their code calls it
            att = torch.einsum("nhd,mhd->hnm", q, k).mul(dh ** -0.5).softmax(-1)
            o = L(torch.einsum("hnm,mhd->nhd", att, v).reshape(-1, D), on)
            x = x + (o if siglip else o * s[a + "layer_scale1.lambda1"])
            y = L(LN(x, n2), a + "mlp.fc1")
            y = L(F.gelu(y, approximate="tanh" if siglip else "none"), a + "mlp.fc2")
            x = x + (y if siglip else y * s[a + "layer_scale2.lambda1"])
        vision.append(x if siglip else LN(x, "layernorm"))
    tokens = torch.cat(vision)
    m = L(LN(tokens, "merger.ln_q").view(-1, 4 * D), "merger.mlp.0")
    return L(F.gelu(m), "merger.mlp.2"), vision


@pytest.mark.parametrize("layout", ["comp-siglip", "comp-dinov2"])
@pytest.mark.parametrize("prefix", ["", "model.vision_tower."])
def test_converted_vfm_plus_merger_equals_their_forward(layout, prefix, rand_images):
    state, config = their_checkpoint(layout, prefix=prefix)
    enc, merger = convert(state, config)
    assert enc.legacy_ape_order and enc.final_norm == (layout == "comp-dinov2")
    assert enc.feeds_prefix is False
    images = rand_images(SIZES)
    with torch.no_grad():
        ref_merged, ref_vision = their_forward({k[len(prefix):]: v for k, v in state.items()}, layout, images)
        packed = enc(images)
        merged = merger(packed).tokens
    for i, ((H, W), t, r) in enumerate(zip(SIZES, packed.split(), ref_vision)):
        torch.testing.assert_close(t[window_order(H // P, W // P)], r, rtol=1e-4, atol=1e-4, msg=f"image {i}")
    torch.testing.assert_close(merged, ref_merged, rtol=1e-4, atol=1e-4)


def test_switches_matter_each_one_alone(rand_images):
    """Each switch the conversion sets changes the output when flipped: none is silently inert."""
    state, config = their_checkpoint("comp-siglip")
    enc, merger = convert(state, config)
    images = rand_images(SIZES[1:3])
    with torch.no_grad():
        base = enc(images).tokens
        for attr, value in (("final_norm", True), ("legacy_ape_order", False), ("rope", False)):
            old = getattr(enc, attr)
            setattr(enc, attr, value)
            assert not torch.allclose(enc(images).tokens, base, atol=1e-3), attr
            setattr(enc, attr, old)
        enc.blocks[0].mlp.act = torch.nn.GELU()  # exact GELU instead of their tanh approximation
        assert not torch.allclose(enc(images).tokens, base, atol=1e-5)


def test_convert_cli_saves_a_folder_that_loads_trains_and_carries_the_merger(tmp_path, rand_images):
    state, config = their_checkpoint("comp-siglip")
    src = tmp_path / "CoMP-SigLIP"
    src.mkdir()
    save_file(state, src / "model.safetensors")
    (src / "config.json").write_text(json.dumps(config))
    assert cli_main(["convert", str(src), str(tmp_path / "out")]) == 0
    enc, merger = convert(*read_checkpoint(src))
    loaded = mc.CRoPEViT.from_pretrained(tmp_path / "out")
    assert loaded.settings() == enc.settings() and loaded.blocks[0].mlp.act.__class__ == enc.blocks[0].mlp.act.__class__
    images = rand_images(SIZES[:2])
    with torch.no_grad():
        torch.testing.assert_close(loaded(images).tokens, enc(images).tokens, rtol=0, atol=0)
        torch.testing.assert_close(load_merger(tmp_path / "out")(enc(images)).tokens, merger(enc(images)).tokens)
    out = loaded(images).tokens.square().mean()
    out.backward()
    assert all(p.grad is not None for n, p in loaded.named_parameters() if n.startswith("blocks"))


def test_comp_model_loads_the_merger_beside_a_converted_vfm(tmp_path):
    from minicomp.toy import TOY_LLM_PATH
    state, config = their_checkpoint("comp-siglip")
    state["merger.mlp.2.weight"], state["merger.mlp.2.bias"] = torch.randn(128, 4 * D), torch.randn(128)  # toy LLM width
    enc, merger = convert(state, config)
    save(enc, merger, tmp_path / "vfm")
    model = mc.CoMPModel.from_pretrained(vision=str(tmp_path / "vfm"), llm=str(TOY_LLM_PATH), legacy_ape_order=True)
    assert not model.vision.final_norm and model.vision.legacy_ape_order
    torch.testing.assert_close(model.merger.state_dict()["mlp.2.weight"], state["merger.mlp.2.weight"])


def test_the_ape_decides_the_grid_and_a_config_that_does_not_fit_is_named():
    state, config = their_checkpoint("comp-dinov2")
    enc, _ = convert(state, dict(config, image_size=224))  # their config.json may name another size
    assert enc.ape_grid == (IMG // P, IMG // P)
    with pytest.raises(ValueError, match="do not fit the architecture"):
        convert(state, dict(config, hidden_size=2 * D, num_attention_heads=HEADS))


def test_keys_that_fit_neither_layout_or_only_partly_are_named():
    with pytest.raises(ValueError, match="fit neither layout"):
        convert({"encoder.blocks.0.weight": torch.zeros(1)}, {})
    state, config = their_checkpoint("comp-siglip")
    del state["vision_model.encoder.layers.1.self_attn.k_proj.bias"]
    state["vision_model.post_layernorm.weight"] = torch.ones(D)
    with pytest.raises(ValueError, match=r"missing keys \['vision_model.encoder.layers.1.self_attn.k_proj.bias'\]; "
                                         r"unexpected keys \['vision_model.post_layernorm.weight'\]"):
        convert(state, config)


@pytest.mark.slow
@pytest.mark.parametrize("layout, width, inter, heads, image, llm", [
    ("comp-siglip", 1152, 4304, 16, 384, 896),   # CoMP-SigLIP-So400M, merger to Qwen2.5-0.5B
    ("comp-dinov2", 1024, 4096, 16, 518, 896)])  # CoMP-DINOv2-Large
def test_their_real_shapes_at_depth_one(layout, width, inter, heads, image, llm):
    g = torch.Generator().manual_seed(0)
    n0, p = (image // 14) ** 2, 14
    if layout == "comp-siglip":
        a = "vision_model.encoder.layers.0."
        s = {"vision_model.embeddings.patch_embedding.weight": torch.randn(width, 3, p, p, generator=g) * 0.02,
             "vision_model.embeddings.patch_embedding.bias": torch.zeros(width),
             "vision_model.embeddings.position_embedding.weight": torch.randn(n0, width, generator=g) * 0.02}
        names = {"self_attn.q_proj": (width, width), "self_attn.k_proj": (width, width), "self_attn.v_proj": (width, width),
                 "self_attn.out_proj": (width, width), "mlp.fc1": (inter, width), "mlp.fc2": (width, inter)}
        norms = ("layer_norm1", "layer_norm2")
        cfg = {"hidden_size": width, "intermediate_size": inter, "num_hidden_layers": 1, "num_attention_heads": heads,
               "image_size": image, "patch_size": p, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6}
    else:
        a = "encoder.layer.0."
        s = {"embeddings.patch_embeddings.projection.weight": torch.randn(width, 3, p, p, generator=g) * 0.02,
             "embeddings.patch_embeddings.projection.bias": torch.zeros(width),
             "embeddings.position_embeddings": torch.randn(1, 1 + n0, width, generator=g) * 0.02,
             "layernorm.weight": torch.ones(width), "layernorm.bias": torch.zeros(width),
             a + "layer_scale1.lambda1": torch.ones(width), a + "layer_scale2.lambda1": torch.ones(width)}
        names = {"attention.attention.query": (width, width), "attention.attention.key": (width, width),
                 "attention.attention.value": (width, width), "attention.output.dense": (width, width),
                 "mlp.fc1": (inter, width), "mlp.fc2": (width, inter)}
        norms = ("norm1", "norm2")
        cfg = {"hidden_size": width, "num_hidden_layers": 1, "num_attention_heads": heads, "image_size": image,
               "patch_size": p, "mlp_ratio": 4, "hidden_act": "gelu", "layer_norm_eps": 1e-6}
    for n, (o, i) in names.items():
        s[f"{a}{n}.weight"], s[f"{a}{n}.bias"] = torch.randn(o, i, generator=g) * 0.02, torch.zeros(o)
    for n in norms:
        s[f"{a}{n}.weight"], s[f"{a}{n}.bias"] = torch.ones(width), torch.zeros(width)
    s.update({"merger.ln_q.weight": torch.ones(width), "merger.ln_q.bias": torch.zeros(width),
              "merger.mlp.0.weight": torch.randn(4 * width, 4 * width, generator=g) * 0.01,
              "merger.mlp.0.bias": torch.zeros(4 * width),
              "merger.mlp.2.weight": torch.randn(llm, 4 * width, generator=g) * 0.01, "merger.mlp.2.bias": torch.zeros(llm)})
    enc, merger = convert(s, cfg)
    assert enc.embed_dim == width and enc.ape_grid == (image // 14,) * 2 and enc.blocks[0].mlp.fc1.out_features == inter
    assert (merger.vision_dim, merger.llm_dim) == (width, llm)
    with torch.no_grad():
        out = merger(enc([torch.randn(3, 28 * 3, 28 * 5, generator=g)]))
    assert out.tokens.shape == (15, llm) and torch.isfinite(out.tokens).all()
