//! The pieces of `tas-bench` worth testing on their own: the RPC load generator, latency
//! percentiles, and the report (tables, the docs section, the chart). The orchestration
//! (sandbox, processes, pinning) is in `src/bin/tas-bench.rs`.

pub mod latency;
pub mod load;
pub mod report;
