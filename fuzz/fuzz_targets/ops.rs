//! Operation sequences on a forest of contexts, checked against a sequential
//! model after every step (see `goctx_fuzz::ops`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| goctx_fuzz::ops::run(data));
