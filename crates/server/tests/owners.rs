//! Two servers sharing one index and blob store: a store in progress on one blocks the same SOP
//! instance on the other (45071) while its server lives, and is taken over at once by a store
//! on the other when its server is killed, without a restart.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tessera_testkit::server::{TestServer, dicom_multipart};
use tessera_testkit::synthetic::Synthetic;

fn tessera() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tessera"))
}

fn instance() -> Synthetic {
    let mut synthetic = Synthetic::new("1.2.3.600", "1.2.3.600.1", "1.2.3.600.1.1");
    (synthetic.rows, synthetic.columns, synthetic.frames) = (512, 512, 8);
    synthetic
}

fn reason(body: &serde_json::Value) -> Option<u64> {
    body["00081198"]["Value"][0]["00081197"]["Value"][0].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_servers_reservation_is_taken_over_by_a_live_one() {
    let dir = tempfile::tempdir().unwrap();
    let a = TestServer::start(tessera(), dir.path(), &[]);
    let b = TestServer::start(tessera(), dir.path(), &[]);
    // Half of the instance, then nothing: `a` holds the reservation.
    let (body, content_type) = dicom_multipart("stall", &[instance().bytes()]);
    let half = Bytes::copy_from_slice(&body[..body.len() / 2]);
    let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(half) }).chain(
        futures::stream::once(async {
            std::future::pending::<()>().await;
            Ok(Bytes::new())
        }),
    );
    let url = a.url("/v2/studies");
    let stalled = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .header("Content-Type", content_type)
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    // Give `a` time to read the header and reserve before `b` tries.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut blocked = false;
    for _ in 0..100 {
        let (status, body) = b.stow("/v2/studies", &[instance().bytes()]).await;
        assert_ne!(status, 200, "a live server's reservation was taken over");
        if reason(&body) == Some(45071) {
            blocked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(blocked, "the store on `a` never reserved the instance");
    a.kill();
    let _ = stalled.await;
    let (status, body) = b.stow("/v2/studies", &[instance().bytes()]).await;
    assert_eq!(status, 200, "taken over at once: {body}");
}
