//! `multipart/related` response bodies, streamed part by part (PS3.18 §8.6.1.2).

use axum::body::Body;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
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

impl Part {
    /// A part whose bytes are already in memory.
    pub fn whole(content_type: String, bytes: Bytes) -> Self {
        Self {
            content_type,
            length: Some(bytes.len() as u64),
            body: stream::once(async move { Ok(bytes) }).boxed(),
        }
    }
}

/// A `multipart/related` response of `part_type` parts, streamed as they are opened.
pub fn response(
    part_type: &str,
    parts: BoxStream<'static, Result<Part, std::io::Error>>,
) -> Response {
    let boundary = boundary();
    let content_type = content_type(&boundary, part_type);
    (
        [(CONTENT_TYPE, content_type)],
        Body::from_stream(body(boundary, parts)),
    )
        .into_response()
}

/// A fresh boundary that cannot occur in the parts' bytes by chance.
fn boundary() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The `Content-Type` of a multipart body of `part_type` parts.
fn content_type(boundary: &str, part_type: &str) -> String {
    format!("multipart/related; type=\"{part_type}\"; boundary={boundary}")
}

/// Frames `parts` (opened lazily, in order) into one multipart body.
fn body(
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
