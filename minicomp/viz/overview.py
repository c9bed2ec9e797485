"""CoMP in one picture (chapter 00 and the README)."""
from __future__ import annotations

import matplotlib.pyplot as plt


def plot_comp_overview():
    """Block diagram of CoMP: C-RoPE ViT → merger → LLM, with L_dec and L_align. Returns a Figure."""
    fig, ax = plt.subplots(figsize=(12, 5.6))
    ax.set(xlim=(0, 12), ylim=(0, 5.7))
    ax.axis("off")

    def box(x, y, w, h, text, color):
        ax.add_patch(plt.Rectangle((x, y), w, h, fc=color, ec="black", lw=1.2))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=9.5)

    def arrow(x0, y0, x1, y1, text="", style="-|>"):
        ax.annotate("", (x1, y1), (x0, y0), arrowprops=dict(arrowstyle=style, lw=1.3))
        if text:
            ax.text((x0 + x1) / 2, (y0 + y1) / 2 + 0.12, text, ha="center", fontsize=8, style="italic")

    box(0.1, 3.1, 1.5, 1.6, "images at\nnative\nresolution\n(any H×W)", "#f2f2f2")
    box(2.1, 3.1, 2.6, 1.6, "VFM (any timm ViT)\npatchify + Int(E_pos)  Eq.1\nRoPE-2D on q, k  Eq.3\n= C-RoPE", "#cfe2f3")
    box(5.2, 3.1, 1.6, 1.6, "2×2 patch\nmerger\nEq. 5", "#d9ead3")
    box(7.4, 3.1, 2.4, 1.6, "LLM\n(transformers\ncausal LM)", "#fff2cc")
    box(10.3, 3.55, 1.6, 0.7, "L_dec  Eq. 6", "#f4cccc")
    box(8.3, 1.7, 3.0, 0.8, "same LLM on the caption alone\n(no image, no gradient)", "#fff2cc")
    box(0.6, 0.2, 3.6, 1.0, "C_v = W F_v   Eq. 8\np_v = softmax(C_v / τ)", "#ead1dc")
    box(4.6, 0.2, 2.8, 1.0, "L_align = −Σ p_t log p_v\nEq. 10 (to the VFM)", "#f4cccc")
    box(7.8, 0.2, 4.1, 1.0, "C_t = W F_t   Eq. 8\np_t = Sinkhorn-Knopp(C_t, prior u_W)  Eq. 9", "#ead1dc")
    arrow(1.6, 3.9, 2.1, 3.9)
    arrow(4.7, 3.9, 5.2, 3.9, "packed\ntokens")
    arrow(6.8, 3.9, 7.4, 3.9, "visual\nprefix")
    arrow(9.8, 3.9, 10.3, 3.9)
    arrow(6.0, 3.1, 2.4, 1.2)
    ax.text(3.2, 2.2, "F_v = mean pool  Eq. 7", fontsize=8, style="italic")
    arrow(9.8, 1.7, 9.8, 1.2)
    ax.text(9.9, 1.35, "F_t = mean pool  Eq. 7", fontsize=8, style="italic")
    arrow(4.2, 0.7, 4.6, 0.7)
    arrow(7.8, 0.7, 7.4, 0.7)
    ax.text(8.3, 2.8, "W = the LLM's word embeddings (prototypes, stop-grad)", ha="center", fontsize=8.5)
    ax.text(6, 5.45, "CoMP: continual multimodal pre-training of a vision foundation model   "
            "L = L_dec + α·L_align  (Eq. 11)", ha="center", fontsize=11, weight="bold")
    ax.text(6, 5.0, "Stage I: merger only, fixed low res, no RoPE  ·  Stage II: everything, RoPE, fixed high res "
            "→ native  ·  Stage III: instruction tuning, no L_align", ha="center", fontsize=8.5, color="#444")
    return fig
