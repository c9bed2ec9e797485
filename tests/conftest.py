import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def small_vit():
    """A small timm ViT with a class token, 2 register tokens and a learned APE on an 8×8 grid."""
    def make(**kw):
        torch.manual_seed(0)
        args = dict(img_size=64, patch_size=8, embed_dim=64, depth=2, num_heads=4, reg_tokens=2,
                    num_classes=0)
        args.update(kw)
        return timm.models.vision_transformer.VisionTransformer(**args).eval()
    return make


@pytest.fixture
def rand_images():
    """rand_images([(H, W), ...], seed) -> list of (3, H, W) standard-normal images."""
    def make(sizes, seed=0):
        g = torch.Generator().manual_seed(seed)
        return [torch.randn(3, h, w, generator=g) for h, w in sizes]
    return make


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The smoke preset trained by one process: (run directory, config, meta)."""
    import minicomp.train as mtrain
    from minicomp.config import load_config

    out = tmp_path_factory.mktemp("smoke") / "run"
    cfg = load_config("smoke", sets=["save_every=2"])
    meta = mtrain.train(cfg, out)
    return out, cfg, meta
