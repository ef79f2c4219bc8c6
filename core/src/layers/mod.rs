//! Layer-incremental images: the layered archive layout, its index, composed pushes and
//! range-by-range downloads (see `docs/bucket-layout.md`, "Layered archives").

pub mod check;
pub mod encode;
pub mod fetch;
pub mod index;
pub mod push;
pub mod tar;

pub use check::RangeChecker;
pub use encode::{Encoded, RangePlan, ReuseSource, encode};
pub use fetch::ranged_download;
pub use index::{IndexRange, LayerIndex, chain_prefix};

#[cfg(test)]
mod tests;
