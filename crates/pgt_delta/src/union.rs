//! UNION ALL of blocks `B₁ ⊎ … ⊎ Bₘ` (same columns).
//!
//! Identity: union is linear, `Δ(B₁ ⊎ … ⊎ Bₘ) = ΔB₁ ⊎ … ⊎ ΔBₘ`; a branch none of
//! whose inputs changed contributes nothing. (UNION without ALL is DISTINCT over
//! this union, see `aggregate`.)

use crate::ctx::Ctx;
use crate::join;
use crate::tree::Block;

/// The union's full result (columns of the blocks, then `__pgt_w`): in a
/// delta context, over the inputs' new states.
pub fn full_sql(blocks: &[Block], ctx: &Ctx) -> String {
    blocks.iter().map(|b| format!("({})", join::full_sql(b, ctx))).collect::<Vec<_>>().join(" UNION ALL ")
}

/// The union's delta, or `None` when no branch changed.
pub fn delta_sql(blocks: &[Block], ctx: &Ctx) -> Option<String> {
    let parts: Vec<String> = blocks.iter().filter_map(|b| join::delta_sql(b, ctx)).map(|d| format!("({d})")).collect();
    if parts.is_empty() {
        None
    } else {
        Some(parts.join(" UNION ALL "))
    }
}
