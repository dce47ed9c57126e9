//! RESP: the request parser and the reply encoder.

pub mod out;
pub mod parse;
