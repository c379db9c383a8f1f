//! Two threads pushing, removing and cleaning one intrusive list, checked
//! for set semantics at the close (see `goctx_fuzz::list::run_two_threads`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| goctx_fuzz::list::run_two_threads(data));
