//! Two threads operating on one forest of contexts, checked against
//! interleaving-independent invariants (see `goctx_fuzz::concurrent`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| goctx_fuzz::concurrent::run(data));
