//! The blob-store conformance suite on every backend: filesystem, memory and Azurite.

use tessera_core::FormatType;
use tessera_testkit::{Backend, blob_suite};

macro_rules! on_every_backend {
    ($($case:ident => $body:expr;)*) => {
        mod filesystem { use super::*; $( #[tokio::test] async fn $case() { run(Backend::FileSystem, $body).await } )* }
        mod memory { use super::*; $( #[tokio::test] async fn $case() { run(Backend::Memory, $body).await } )* }
        mod azurite { use super::*; $( #[tokio::test] async fn $case() { run(Backend::Azurite, $body).await } )* }
    };
}

async fn run<F, Fut>(backend: Backend, case: F)
where
    F: FnOnce(tessera_blob::Containers) -> Fut,
    Fut: Future<Output = ()>,
{
    if let Some(fresh) = backend.fresh().await {
        case(fresh.containers.clone()).await;
    }
}

on_every_backend! {
    format_old => |c| blob_suite::format_table(c, FormatType::Old);
    format_dual => |c| blob_suite::format_table(c, FormatType::Dual);
    format_new => |c| blob_suite::format_table(c, FormatType::New);
    create_only => blob_suite::create_only;
    staged_upload => blob_suite::staged_upload;
    failed_body_leaves_nothing => blob_suite::failed_body_leaves_nothing;
    fallback_reads => blob_suite::fallback_reads;
    legacy_blobs => blob_suite::legacy_blobs;
    container_basics => blob_suite::container_basics;
}
