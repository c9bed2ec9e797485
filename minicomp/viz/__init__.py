"""Figures and widget callbacks for the notebooks, one module per topic. Each returns arrays or
a matplotlib Figure; the notebooks wire sliders to these functions and nothing else, so every
interactive view is covered by the unit tests."""
from .overview import plot_comp_overview
from .position import (ape_similarity, ape_similarity_map, legacy_ape_displacement, packed_attention_mask,
                       plot_ape_similarity, plot_ape_similarity_grid, plot_legacy_ape_order, plot_packed_batch,
                       plot_rope_scores, plot_rope_spectrum, rope_relative_scores, rope_scores_at_offset,
                       rope_spectrum)
from .sweep import plot_sweep, sweep_points
from .sinkhorn import (marginal_errors, plot_modes, plot_sinkhorn, plot_sinkhorn_convergence, toy_scores,
                       zipf_prior)

__all__ = [
    "ape_similarity", "ape_similarity_map", "legacy_ape_displacement", "marginal_errors", "packed_attention_mask",
    "plot_ape_similarity", "plot_ape_similarity_grid", "plot_comp_overview", "plot_legacy_ape_order", "plot_modes",
    "plot_packed_batch", "plot_rope_scores", "plot_rope_spectrum", "plot_sinkhorn", "plot_sinkhorn_convergence", "plot_sweep",
    "rope_relative_scores", "rope_scores_at_offset", "rope_spectrum", "sweep_points", "toy_scores", "zipf_prior",
]
