//! Writes a synthetic native multi-frame DICOM instance of about SIZE MiB to PATH, streaming
//! (for benchmarks): `cargo run --release -p tessera-testkit --example synthetic_dicom -- PATH SIZE [SOP-SUFFIX]`.

use std::io::{BufWriter, Write};

use tessera_testkit::synthetic::Synthetic;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .expect("usage: synthetic_dicom PATH SIZE_MIB [SUFFIX]");
    let mib: u64 = args.next().and_then(|s| s.parse().ok()).expect("SIZE_MIB");
    let suffix = args.next().unwrap_or_else(|| "1".into());
    // 1 MiB frames: 1024 × 1024 8-bit pixels.
    let mut synthetic = Synthetic::new(
        "1.2.826.0.1.3680043.10.9",
        "1.2.826.0.1.3680043.10.9.1",
        &format!("1.2.826.0.1.3680043.10.9.1.{suffix}"),
    );
    synthetic.rows = 1024;
    synthetic.columns = 1024;
    synthetic.frames = mib.max(1) as u32;
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(&path)?);
    out.write_all(&synthetic.header())?;
    let mut chunk = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    while offset < synthetic.pixel_length() {
        let len = (synthetic.pixel_length() - offset).min(chunk.len() as u64) as usize;
        for (i, byte) in chunk[..len].iter_mut().enumerate() {
            *byte = Synthetic::pixel(offset + i as u64);
        }
        out.write_all(&chunk[..len])?;
        offset += len as u64;
    }
    out.flush()
}
