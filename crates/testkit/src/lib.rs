//! Shared test fixtures and conformance suites for Tessera.
//!
//! Suites are written once as `pub async fn`s over the types under test and called from a test
//! per backend (filesystem, memory, Azurite), so every backend passes the same assertions.
//! Backends that need a service (Azurite) are found through environment variables that the
//! README's test command sets; a bare `cargo test` skips them with a message, unless
//! `TESSERA_TEST_REQUIRE_SERVICES=1` makes their absence a failure.

pub mod backend;
pub mod blob_suite;
pub mod index;
pub mod index_suite;
pub mod memory;
pub mod oidc;
pub mod server;
pub mod synthetic;

pub use backend::{Backend, Container, ServerBlobs, TestContainers, eventually_async};
pub use index::{IndexEngine, TestIndex};
