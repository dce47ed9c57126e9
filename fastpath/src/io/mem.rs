//! In-memory link (filled in).
