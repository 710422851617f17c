//! `watchman.v1`: the gRPC API of Watchman, generated from `watchman/v1/watchman.proto`.
#![allow(missing_debug_implementations, unreachable_pub, clippy::all)]

/// Generated messages and the client and server of `watchman.v1.Watchman`.
pub mod v1 {
    tonic::include_proto!("watchman.v1");
}

/// The encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("watchman_descriptor");
