//! What the fuzz targets share: cutting an input into chunks, and one in-process Tessera (HTTP
//! router over a `DicomService` on an in-memory blob store and a SQLite index in a temporary file) built
//! once per fuzzing process, so that each input costs a request, not a start-up.

use std::path::PathBuf;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use bytes::Bytes;
use tessera_blob::{BlobStoreLocation, ContainerNames, FormatPolicy, InstanceBlobStore};
use tessera_core::FormatType;
use tessera_index::InstanceIndex;
use tessera_service::{DeletedInstanceCleanup, DicomService, ServiceSettings};
use tower::ServiceExt;

/// The largest single allocation a fuzzed input may make. Inputs are at most 128 KiB, so a
/// larger allocation can only follow a length declared in the input, which must not be trusted:
/// it aborts at once (a crash naming the size) instead of slowly touching gigabytes until the
/// RSS limit (without a sanitizer libFuzzer's `-malloc_limit_mb` has no effect).
const MAX_ALLOCATION: usize = 256 << 20;

/// The system allocator with [`MAX_ALLOCATION`].
struct CappedAllocator;

impl CappedAllocator {
    fn check(size: usize) {
        if size > MAX_ALLOCATION {
            use std::io::Write;
            // No formatting: it could allocate.
            let mut digits = [0u8; 20];
            let mut at = digits.len();
            let mut n = size;
            loop {
                at -= 1;
                digits[at] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            let mut stderr = std::io::stderr().lock();
            let _ = stderr.write_all(b"\n==tessera-fuzz== allocation of ");
            let _ = stderr.write_all(&digits[at..]);
            let _ = stderr
                .write_all(b" bytes exceeds the fuzzing limit (a declared length trusted?)\n");
            std::process::abort();
        }
    }
}

// SAFETY: forwards to `System` unchanged; only refuses sizes above the cap, by aborting.
unsafe impl std::alloc::GlobalAlloc for CappedAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        Self::check(layout.size());
        // SAFETY: the caller's contract is `System`'s.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        Self::check(layout.size());
        // SAFETY: as above.
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: as above.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        Self::check(new_size);
        // SAFETY: as above.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CappedAllocator = CappedAllocator;

/// Cuts `bytes` into chunks whose sizes follow from `seed`: single bytes, odd sizes, or sizes
/// around the 64 KiB at which the header reader first scans, so chunk edges land everywhere.
pub fn chunks(bytes: &[u8], seed: u8) -> impl Iterator<Item = &[u8]> {
    let sizes: [usize; 4] = match seed % 8 {
        0 => [1, 1, 1, 1],
        1 => [3, 7, 1, 13],
        2 => [8, 4, 12, 2],
        3 => [128, 1, 255, 64],
        4 => [4096, 17, 65535, 1],
        5 => [65536, 65536, 65536, 65536],
        6 => [usize::from(seed) + 1, 1, usize::from(seed) / 2 + 1, 5],
        _ => [usize::MAX, usize::MAX, usize::MAX, usize::MAX],
    };
    let mut rest = bytes;
    let mut i = 0;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let size = sizes[i % sizes.len()].min(rest.len());
        i += 1;
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        Some(chunk)
    })
}

/// The Tessera every request of a fuzzing process goes to.
pub struct App {
    /// Runs the requests (one thread: inputs are independent and run one at a time).
    pub runtime: tokio::runtime::Runtime,
    /// `tessera_http::router` over `service`.
    pub router: Router,
    /// The service behind the router (for the cleanup round after deletes).
    pub service: DicomService,
}

/// The sample files under `../shared/testdata` (or `$TESSERA_FUZZ_TESTDATA`), if present.
pub fn sample_files() -> Vec<Vec<u8>> {
    let root = std::env::var_os("TESSERA_FUZZ_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../shared/testdata"
            ))
        });
    let mut files = Vec::new();
    for dir in [root.clone(), root.join("transfer-syntaxes")] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            if path.extension().is_some_and(|e| e == "dcm")
                && let Ok(bytes) = std::fs::read(&path)
            {
                files.push(bytes);
            }
        }
    }
    files
}

/// A SQLite file of this process under `$TESSERA_FUZZ_INDEX_DIR` (scripts/fuzz.sh removes the
/// folder). Not `sqlite::memory:`: each pooled connection would open its own empty database.
fn index_url() -> String {
    let dir = std::env::var_os("TESSERA_FUZZ_INDEX_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("tessera-fuzz-index"));
    let path = dir.join(format!("index-{}.db", std::process::id()));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    format!("sqlite://{}", path.display())
}

static APP: LazyLock<App> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("fuzz: tokio runtime");
    let service = runtime.block_on(async {
        let containers = BlobStoreLocation::Memory
            .open(None, &ContainerNames::default())
            .await
            .expect("fuzz: memory blob store");
        let blobs = InstanceBlobStore::new(containers, FormatPolicy::new(FormatType::Dual));
        let index = InstanceIndex::open(&index_url())
            .await
            .expect("fuzz: SQLite index");
        DicomService::new(
            index,
            Arc::new(blobs),
            ServiceSettings {
                delete_delay: Duration::ZERO,
                limits: tessera_core::Limits::default(),
            },
        )
    });
    let router = tessera_http::router(tessera_http::AppState::new(
        service.clone(),
        tessera_core::Limits::default(),
        tessera_http::PublicUrl::default(),
    ));
    App {
        runtime,
        router,
        service,
    }
});

/// The process's Tessera, built on first use.
pub fn app() -> &'static App {
    &APP
}

/// A response, read whole.
pub struct Answer {
    /// Its status.
    pub status: StatusCode,
    /// Its body.
    pub body: Bytes,
}

impl App {
    /// Sends `request` through the router and reads the answer.
    pub async fn send(&self, request: Request<Body>) -> Answer {
        let response = match self.router.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("fuzz: response body");
        Answer { status, body }
    }

    /// Removes what a STOW answer says was stored (DELETE, then one cleanup round), so the
    /// in-memory stores do not grow with the number of inputs.
    pub async fn remove_stored(&self, stow_answer: &[u8]) {
        for path in retrieve_paths(stow_answer) {
            let request = Request::delete(path.as_str())
                .body(Body::empty())
                .expect("fuzz: DELETE request");
            let answer = self.send(request).await;
            assert!(
                answer.status == StatusCode::NO_CONTENT || answer.status == StatusCode::NOT_FOUND,
                "DELETE {path} of a stored instance answered {}",
                answer.status
            );
        }
        let cleanup = DeletedInstanceCleanup {
            polling_interval: Duration::ZERO,
            batch_size: 100,
            max_retries: 3,
            retry_back_off: Duration::ZERO,
        };
        cleanup
            .round(&self.service, &tokio_util::sync::CancellationToken::new())
            .await
            .expect("fuzz: cleanup round");
    }
}

/// The paths (`/v1/studies/…/instances/…`) of the RetrieveURLs of the instances a STOW answer
/// lists as stored.
pub fn retrieve_paths(stow_answer: &[u8]) -> Vec<String> {
    let Ok(dataset) = serde_json::from_slice::<serde_json::Value>(stow_answer) else {
        return Vec::new();
    };
    let Some(items) = dataset["00081199"]["Value"].as_array() else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| item["00081190"]["Value"][0].as_str())
        .filter_map(|url| url.find("/v").map(|at| url[at..].to_owned()))
        .collect()
}
