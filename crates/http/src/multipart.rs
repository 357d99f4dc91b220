//! `multipart/related` response bodies, streamed part by part (PS3.18 §8.6.1.2).

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, stream};

/// One part: its content type, its length if known, and its bytes as a stream.
pub struct Part {
    /// `Content-Type` of the part.
    pub content_type: String,
    /// `Content-Length` of the part, when known.
    pub length: Option<u64>,
    /// The bytes.
    pub body: BoxStream<'static, Result<Bytes, std::io::Error>>,
}

/// A fresh boundary that cannot occur in the parts' bytes by chance.
pub fn boundary() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The `Content-Type` of a multipart body of `part_type` parts.
pub fn content_type(boundary: &str, part_type: &str) -> String {
    format!("multipart/related; type=\"{part_type}\"; boundary={boundary}")
}

/// Frames `parts` (opened lazily, in order) into one multipart body.
pub fn body(
    boundary: String,
    parts: BoxStream<'static, Result<Part, std::io::Error>>,
) -> BoxStream<'static, Result<Bytes, std::io::Error>> {
    let closing = Bytes::from(format!("--{boundary}--\r\n"));
    parts
        .flat_map(move |part| match part {
            Ok(part) => {
                let mut head = format!("--{boundary}\r\nContent-Type: {}\r\n", part.content_type);
                if let Some(length) = part.length {
                    head.push_str(&format!("Content-Length: {length}\r\n"));
                }
                head.push_str("\r\n");
                stream::once(async move { Ok(Bytes::from(head)) })
                    .chain(part.body)
                    .chain(stream::once(async { Ok(Bytes::from_static(b"\r\n")) }))
                    .boxed()
            }
            Err(error) => stream::once(async move { Err(error) }).boxed(),
        })
        .chain(stream::once(async move { Ok(closing) }))
        .boxed()
}
