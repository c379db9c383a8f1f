//! goctx contexts across services.
//!
//! (docs follow)

mod timeout;

pub use timeout::{
    GRPC_TIMEOUT, GrpcTimeout, MAX_GRPC_TIMEOUT, TimeoutError, format_grpc_timeout,
    parse_grpc_timeout,
};
