//! The pieces of `tas-bench` worth testing on their own: the RPC load generator, latency
//! percentiles, the report (tables, the docs section, the chart), and `tas-scale`'s
//! many-connection client. The orchestration
//! (sandbox, processes, pinning) is in `src/bin/tas-bench.rs`.

pub mod latency;
pub mod load;
pub mod report;
pub mod scale;
