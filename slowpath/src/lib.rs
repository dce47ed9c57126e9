//! Slow path.

pub mod attach;
pub mod region;
