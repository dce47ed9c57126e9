//! Slow path.
