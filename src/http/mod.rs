//! The HTTP server.

pub mod recon;
