//! modelfs: a read-only FUSE tree of ML models, fetched lazily chunk by chunk,
//! verified before a byte is served, and kept in a persistent shared cache.
//!
//! The modules follow one read from the kernel to a source and back:
//! [`fs`] (FUSE adapter and inode tree) → [`cache`] (verified chunks on disk) →
//! [`fetch`] (single flight, readahead, retry, failover, verification) →
//! [`source`] (one module per URL scheme). [`manifest`] describes what exists;
//! [`signature`] binds what an open may read to a publisher's signature;
//! [`cli`] is the thin command-line edge.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod cache;
pub mod cli;
pub mod fetch;
pub mod fileio;
pub mod fs;
pub mod hash;
pub mod manifest;
pub mod metrics;
pub mod signature;
pub mod source;
pub mod units;
