//! `multipart/related` response bodies, streamed part by part (PS3.18 §8.6.1.2).

use axum::body::Body;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
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

/// A `multipart/related` response of parts known up front (their bodies still streamed as
/// they are sent): with a `Content-Length` when every part's length is known, so the body is
/// not chunked (clients read a sized body in one go; a single instance came about a quarter
/// slower to a Python client chunked). A part whose body then differs from its length cuts the
/// response short, as a failing part does.
pub fn sized_response(part_type: &str, parts: Vec<Part>) -> Response {
    let boundary = boundary();
    let content_type = content_type(&boundary, part_type);
    let length = parts
        .iter()
        .try_fold(closing(&boundary).len() as u64, |total, part| {
            let length = part.length?;
            let head = head(&boundary, &part.content_type, Some(length)).len() as u64;
            total.checked_add(head)?.checked_add(length)?.checked_add(2)
        });
    let body = Body::from_stream(body(
        boundary,
        stream::iter(parts.into_iter().map(Ok)).boxed(),
    ));
    match length {
        Some(length) => (
            [
                (CONTENT_TYPE, content_type),
                (CONTENT_LENGTH, length.to_string()),
            ],
            body,
        )
            .into_response(),
        None => ([(CONTENT_TYPE, content_type)], body).into_response(),
    }
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
    let closing = Bytes::from(closing(&boundary));
    parts
        .flat_map(move |part| match part {
            Ok(part) => {
                let head = head(&boundary, &part.content_type, part.length);
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

/// The delimiter and headers in front of a part.
fn head(boundary: &str, content_type: &str, length: Option<u64>) -> String {
    match length {
        Some(length) => format!(
            "--{boundary}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n"
        ),
        None => format!("--{boundary}\r\nContent-Type: {content_type}\r\n\r\n"),
    }
}

/// The delimiter that closes the body.
fn closing(boundary: &str) -> String {
    format!("--{boundary}--\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(response: Response) -> (Option<u64>, Vec<u8>) {
        let length = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (length, body.to_vec())
    }

    #[tokio::test]
    async fn a_sized_response_declares_the_length_it_sends() {
        let parts = vec![
            Part::whole("application/dicom".into(), Bytes::from_static(b"first")),
            Part::whole("application/dicom".into(), Bytes::from_static(b"")),
            Part::whole("application/dicom".into(), Bytes::from(vec![7u8; 70_000])),
        ];
        let (length, body) = read(sized_response("application/dicom", parts)).await;
        assert_eq!(length, Some(body.len() as u64));
        assert!(body.ends_with(b"--\r\n"));

        let unknown = Part {
            content_type: "application/dicom".into(),
            length: None,
            body: stream::once(async { Ok(Bytes::from_static(b"x")) }).boxed(),
        };
        let (length, body) = read(sized_response("application/dicom", vec![unknown])).await;
        assert_eq!(length, None);
        assert!(!body.is_empty());
    }
}
