//! adclick's benchmarks: the load generator that drives a cluster and reports throughput
//! and latency percentiles, micro-benchmarks of the storage engine, and the storage demo
//! that the README's run command starts until the cluster exists.
