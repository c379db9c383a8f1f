//! Operation sequences on goctx's intrusive list, checked against a `Vec`
//! model after every step (see `goctx_fuzz::list`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| goctx_fuzz::list::run(data));
