//! The key-value server built on libtas. Its store and RESP server arrive with the
//! kvstore issue; the crate exists so the workspace layout is the final one.
#![deny(unsafe_code)]
#![warn(missing_docs)]
