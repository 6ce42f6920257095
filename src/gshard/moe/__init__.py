"""GShard Mixture-of-Experts: gating (top-2 and beyond) and the MoE layer (DESIGN §7)."""
from .gating import (GatingResult, KINDS, SECOND_EXPERT_POLICIES, assign_slots,
                     compute_capacity, expert_choice_gating, gating, load_balancing_loss,
                     router_entropy, router_z_loss, top1_gating, top2_gating, topk_gating,
                     token_choice_gating)
from .routing import SCORES, route, sort_ranks, update_bias
from .layer import (DISPATCH, MoEAxes, einsum_combine, einsum_dispatch, expert_ffn,
                    expert_ffn_major, scatter_combine_major,
                    gather_dispatch, moe_layer, router_logits, scatter_combine)

__all__ = ["SCORES", "route", "sort_ranks", "update_bias", "GatingResult", "KINDS", "SECOND_EXPERT_POLICIES", "assign_slots", "compute_capacity",
           "expert_choice_gating", "gating", "load_balancing_loss", "router_entropy",
           "router_z_loss", "top1_gating", "top2_gating", "topk_gating", "token_choice_gating",
           "DISPATCH", "MoEAxes", "einsum_combine", "einsum_dispatch", "expert_ffn",
           "expert_ffn_major", "scatter_combine_major",
           "gather_dispatch", "moe_layer", "router_logits", "scatter_combine"]
