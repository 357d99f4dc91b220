//! What the instance store logs: each Old-name use when `LogOldFormatUsage` is on, and a New-mode
//! fallback once per instance.

use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tessera_blob::{BlobStoreLocation, ContainerNames, FormatPolicy, InstanceBlobStore};
use tessera_core::{FormatType, InstanceIdentifier, VersionedInstance, Watermark};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self, needle: &str) -> usize {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines().filter(|l| l.contains(needle)).count()
    }
}

fn body() -> futures::stream::Iter<std::array::IntoIter<Result<Bytes, std::io::Error>, 1>> {
    futures::stream::iter([Ok(Bytes::from_static(b"DICM"))])
}

#[tokio::test]
async fn old_name_uses_and_fallbacks_are_logged() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let containers = BlobStoreLocation::Memory
        .open(None, &ContainerNames::default())
        .await
        .unwrap();
    let id = InstanceIdentifier::parse("1.2", "1.2.3", "1.2.3.4").unwrap();
    let instance = VersionedInstance::new(id, Watermark::new(17).unwrap());

    let quiet = InstanceBlobStore::new(containers.clone(), FormatPolicy::new(FormatType::Old));
    quiet.put_file(&instance, body()).await.unwrap();
    assert_eq!(
        captured.lines("Using old blob format."),
        0,
        "off by default"
    );

    let logging = FormatPolicy {
        log_old_format_usage: true,
        ..FormatPolicy::new(FormatType::Old)
    };
    let old = InstanceBlobStore::new(containers.clone(), logging);
    old.get_file(&instance).await.unwrap();
    old.delete_layout(&instance, tessera_blob::BlobLayout::New)
        .await
        .unwrap();
    assert_eq!(
        captured.lines("Using old blob format."),
        1,
        "a read of an Old name, not a New delete"
    );
    assert_eq!(captured.lines("watermark=17"), 1);

    let new = InstanceBlobStore::new(containers, FormatPolicy::new(FormatType::New));
    for _ in 0..3 {
        new.get_file(&instance).await.unwrap();
    }
    assert_eq!(new.fallback_reads(), 3);
    assert_eq!(
        captured.lines("New blob missing"),
        1,
        "fallback logged once per instance"
    );
}
