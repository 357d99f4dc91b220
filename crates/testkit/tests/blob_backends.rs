//! The blob-store conformance suite on every backend: filesystem, memory, Azurite and S3
//! (moto), and on the filesystem and memory through the fault-injection wrapper with nothing
//! injected, which shows the wrapper is transparent.

use tessera_blob::{Containers, FaultInjection, FaultInjector};
use tessera_core::FormatType;
use tessera_testkit::{Backend, blob_suite};

macro_rules! on_every_backend {
    ($($case:ident => $body:expr;)*) => {
        mod filesystem { use super::*; $( #[tokio::test] async fn $case() { run(Backend::FileSystem, $body).await } )* }
        mod memory { use super::*; $( #[tokio::test] async fn $case() { run(Backend::Memory, $body).await } )* }
        mod azurite { use super::*; $( #[tokio::test] async fn $case() { run(Backend::Azurite, $body).await } )* }
        mod s3 { use super::*; $( #[tokio::test] async fn $case() { run(Backend::S3, $body).await } )* }
        mod filesystem_fault_wrapper { use super::*; $( #[tokio::test] async fn $case() { run_wrapped(Backend::FileSystem, $body).await } )* }
        mod memory_fault_wrapper { use super::*; $( #[tokio::test] async fn $case() { run_wrapped(Backend::Memory, $body).await } )* }
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

/// The backend's containers behind a fault injector that injects nothing.
async fn run_wrapped<F, Fut>(backend: Backend, case: F)
where
    F: FnOnce(Containers) -> Fut,
    Fut: Future<Output = ()>,
{
    if let Some(fresh) = backend.fresh().await {
        let faults = FaultInjector::new(FaultInjection {
            seed: 1,
            ..FaultInjection::default()
        });
        let containers = fresh.containers.clone();
        let wrapped = Containers {
            files: containers.files.with_faults(faults.clone()),
            metadata: containers.metadata.with_faults(faults.clone()),
        };
        case(wrapped).await;
        assert!(
            faults.tally().calls > 0,
            "the calls went through the wrapper"
        );
    }
}

on_every_backend! {
    format_old => |c| blob_suite::format_table(c, FormatType::Old);
    format_dual => |c| blob_suite::format_table(c, FormatType::Dual);
    format_new => |c| blob_suite::format_table(c, FormatType::New);
    create_only => blob_suite::create_only;
    staged_upload => blob_suite::staged_upload;
    staged_instance => blob_suite::staged_instance;
    failed_body_leaves_nothing => blob_suite::failed_body_leaves_nothing;
    fallback_reads => blob_suite::fallback_reads;
    legacy_blobs => blob_suite::legacy_blobs;
    container_basics => blob_suite::container_basics;
    batched_copies => blob_suite::batched_copies;
}
