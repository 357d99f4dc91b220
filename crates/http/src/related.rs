//! `multipart/related` request bodies (RFC 2387 over RFC 2046 §5.1), read part by part as
//! they stream in.
//!
//! Hand-written rather than multer because multer (built for form-data) buffers the preamble
//! and each part's header block until it finds their end, without a bound: a body with no
//! boundary, or a part header of 150 MB, is held whole. Here the reader never holds more than
//! the incoming chunk and up to a delimiter's length of the one before (a slice, which keeps
//! that chunk's buffer alive), plus a joined header block of at most `MaxPartHeaderBytes` and a
//! boundary line; the preamble and header sizes and the number of parts are limited, and each
//! limit names its configuration key.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};

/// Why a multipart body cannot be read further.
#[derive(Debug, thiserror::Error)]
pub enum RelatedError {
    /// The body is not multipart/related as declared.
    #[error("the multipart body is malformed: {0}")]
    Malformed(&'static str),
    /// A limit of `Tessera:Limits` was crossed.
    #[error("the multipart body exceeds {key} ({limit})")]
    Limit {
        /// The configuration key of the limit.
        key: &'static str,
        /// Its value.
        limit: u64,
    },
    /// Reading the request body failed (client gone, timeout, size limit).
    #[error("the request body failed: {0}")]
    Body(#[source] axum::Error),
}

/// Limits of one body (from `Tessera:Limits`).
#[derive(Clone, Copy, Debug)]
pub struct RelatedLimits {
    /// Most parts.
    pub max_parts: u32,
    /// Most bytes of one part's header block.
    pub max_part_header_bytes: u32,
    /// Most bytes before the first boundary.
    pub max_preamble_bytes: u32,
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    /// Before the first boundary.
    Preamble,
    /// Just after a boundary line: headers follow.
    Headers,
    /// In a part's body.
    Body,
    /// After the close delimiter (or after an error).
    Done,
}

/// The headers of one part that matter here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartHeaders {
    /// `Content-Type`, when the part has one.
    pub content_type: Option<String>,
}

/// The body's bytes not read yet: the chunks as they arrived, sliced but not copied, so a
/// part's body reaches the store in the buffers hyper read it into. Only a header block (at
/// most `MaxPartHeaderBytes` and a boundary line) is ever copied, to be seen whole.
#[derive(Default)]
struct Unread {
    chunks: VecDeque<Bytes>,
    len: usize,
}

impl Unread {
    fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.len += chunk.len();
            self.chunks.push_back(chunk);
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    /// Drops the first `count` bytes (all of them, if fewer are held).
    fn advance(&mut self, mut count: usize) {
        while count > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            if front.len() <= count {
                count -= front.len();
                self.len -= front.len();
                self.chunks.pop_front();
            } else {
                front.advance(count);
                self.len -= count;
                count = 0;
            }
        }
    }

    /// Up to `most` bytes from the front: a slice of the first chunk, so possibly fewer.
    fn take(&mut self, most: usize) -> Bytes {
        let Some(front) = self.chunks.front_mut() else {
            return Bytes::new();
        };
        let taken = if front.len() <= most {
            self.chunks.pop_front().unwrap_or_default()
        } else {
            front.split_to(most)
        };
        self.len -= taken.len();
        taken
    }

    /// The first `most` bytes (or all held, if fewer), in one piece: chunks they span are
    /// joined, copying only those bytes.
    fn front(&mut self, most: usize) -> &[u8] {
        let want = most.min(self.len);
        if self.chunks.front().map_or(0, Bytes::len) < want {
            let mut joined = BytesMut::with_capacity(want);
            while joined.len() < want {
                let Some(front) = self.chunks.front_mut() else {
                    break;
                };
                let take = (want - joined.len()).min(front.len());
                joined.extend_from_slice(&front[..take]);
                if take == front.len() {
                    self.chunks.pop_front();
                } else {
                    front.advance(take);
                }
            }
            self.chunks.push_front(joined.freeze());
        }
        self.chunks.front().map_or(&[], |chunk| &chunk[..want])
    }

    /// Where `needle` first begins, also when it spans chunks.
    fn find(&self, needle: &[u8]) -> Option<usize> {
        let overlap = needle.len().saturating_sub(1);
        let mut offset = 0usize;
        // The last `overlap` bytes before `offset`: where a match across a chunk's start begins.
        // Allocated only when a second chunk follows (mostly one chunk is held).
        let mut tail: Vec<u8> = Vec::new();
        let last = self.chunks.len().saturating_sub(1);
        for (index, chunk) in self.chunks.iter().enumerate() {
            if !tail.is_empty() {
                let behind = tail.len();
                tail.extend_from_slice(&chunk[..chunk.len().min(overlap)]);
                // A match beginning in the tail comes before any within this chunk.
                if let Some(at) = find(&tail, needle).filter(|&at| at < behind) {
                    return Some(offset - behind + at);
                }
                tail.truncate(behind);
            }
            if let Some(at) = find(chunk, needle) {
                return Some(offset + at);
            }
            if index == last {
                break;
            }
            tail.extend_from_slice(&chunk[chunk.len().saturating_sub(overlap)..]);
            let excess = tail.len().saturating_sub(overlap);
            tail.drain(..excess);
            offset += chunk.len();
        }
        None
    }
}

/// A multipart/related body being read.
pub struct RelatedReader<S> {
    body: S,
    /// `\r\n--boundary`: what ends a part's body.
    delimiter: Vec<u8>,
    unread: Unread,
    state: State,
    parts: u32,
    /// Preamble bytes already dropped from the buffer.
    preamble: u64,
    limits: RelatedLimits,
    body_ended: bool,
    /// The error that ended the body, for the request's answer.
    failure: Option<String>,
}

/// What a header block, as far as it has arrived, says to do.
enum HeaderStep {
    /// The close delimiter: no more parts.
    Closed,
    /// A part without headers or content: skip this many bytes and look again.
    Skip(usize),
    /// A part's headers; its body begins after this many bytes.
    Part(Result<PartHeaders, RelatedError>, usize),
    /// Past a limit.
    TooLong,
    /// More bytes are needed.
    More,
    /// More bytes would tell whether a delimiter follows at once; without them, it does not.
    Peek,
    /// Malformed.
    Malformed(&'static str),
}

impl<S> RelatedReader<S>
where
    S: Stream<Item = Result<Bytes, axum::Error>> + Unpin,
{
    /// A reader of `body` whose parts are separated by `boundary`.
    pub fn new(body: S, boundary: &str, limits: RelatedLimits) -> Self {
        let mut delimiter = b"\r\n--".to_vec();
        delimiter.extend_from_slice(boundary.as_bytes());
        // The first boundary may open the body without a preceding line break.
        let mut unread = Unread::default();
        unread.push(Bytes::from_static(b"\r\n"));
        Self {
            body,
            delimiter,
            unread,
            state: State::Preamble,
            parts: 0,
            preamble: 0,
            limits,
            body_ended: false,
            failure: None,
        }
    }

    /// Reads more of the body; `false` at its end.
    async fn fill(&mut self) -> Result<bool, RelatedError> {
        if self.body_ended {
            return Ok(false);
        }
        match self.body.next().await {
            Some(Ok(chunk)) => {
                self.unread.push(chunk);
                Ok(true)
            }
            Some(Err(error)) => self.fail(RelatedError::Body(error)),
            None => {
                self.body_ended = true;
                Ok(false)
            }
        }
    }

    fn fail<T>(&mut self, error: RelatedError) -> Result<T, RelatedError> {
        self.state = State::Done;
        self.failure = Some(error.to_string());
        Err(error)
    }

    /// Why the body could not be read to its end, once that happened.
    pub fn failure(&self) -> Option<String> {
        self.failure.clone()
    }

    /// Moves to the next part: its headers, or `None` after the close delimiter. The rest of
    /// the current part's body, if any, is skipped.
    pub async fn next_part(&mut self) -> Result<Option<PartHeaders>, RelatedError> {
        loop {
            match self.state {
                State::Done => return Ok(None),
                State::Body => while self.next_chunk().await?.is_some() {},
                State::Preamble => {
                    if let Some(at) = self.unread.find(&self.delimiter) {
                        self.unread.advance(at + self.delimiter.len());
                        self.state = State::Headers;
                        continue;
                    }
                    let preamble = self.preamble + self.unread.len().saturating_sub(2) as u64;
                    let allowed =
                        u64::from(self.limits.max_preamble_bytes) + self.delimiter.len() as u64;
                    if preamble > allowed {
                        return self.fail(RelatedError::Limit {
                            key: "Tessera:Limits:MaxPreambleBytes",
                            limit: self.limits.max_preamble_bytes.into(),
                        });
                    }
                    // Keep only what could still begin the delimiter.
                    let keep = self.delimiter.len() - 1;
                    if self.unread.len() > keep {
                        let drop = self.unread.len() - keep;
                        self.unread.advance(drop);
                        self.preamble += drop as u64;
                    }
                    if !self.fill().await? {
                        return self.fail(RelatedError::Malformed("no boundary in the body"));
                    }
                }
                State::Headers => return self.headers().await,
            }
        }
    }

    /// After a boundary: `--` closes the body; otherwise transport padding, a line break and the
    /// part's header block.
    async fn headers(&mut self) -> Result<Option<PartHeaders>, RelatedError> {
        let max = self.limits.max_part_header_bytes as usize;
        // Enough to see a boundary line of padding, the longest header block and what follows.
        let window = max + 64 + 4 + self.delimiter.len() + 2;
        loop {
            let more = !self.body_ended;
            let step = header_step(self.unread.front(window), &self.delimiter, max, more);
            match step {
                HeaderStep::Closed => {
                    // The close delimiter: what follows is the epilogue, which is ignored.
                    self.state = State::Done;
                    return Ok(None);
                }
                HeaderStep::Skip(count) => {
                    self.unread.advance(count);
                    // Counted all the same, so that a body of empty parts stays bounded.
                    self.count_part()?;
                    continue;
                }
                HeaderStep::Part(headers, count) => {
                    self.unread.advance(count);
                    let headers = match headers {
                        Ok(headers) => headers,
                        Err(error) => return self.fail(error),
                    };
                    self.count_part()?;
                    self.state = State::Body;
                    return Ok(Some(headers));
                }
                HeaderStep::TooLong => {
                    return self.fail(RelatedError::Limit {
                        key: "Tessera:Limits:MaxPartHeaderBytes",
                        limit: max as u64,
                    });
                }
                HeaderStep::Malformed(why) => return self.fail(RelatedError::Malformed(why)),
                HeaderStep::Peek => {
                    self.fill().await?;
                    continue;
                }
                HeaderStep::More => {}
            }
            if !self.fill().await? {
                return self.fail(RelatedError::Malformed("the body ends in a part's headers"));
            }
        }
    }

    /// Counts one more body part against `Tessera:Limits:MaxParts`.
    fn count_part(&mut self) -> Result<(), RelatedError> {
        self.parts += 1;
        if self.parts > self.limits.max_parts {
            return self.fail(RelatedError::Limit {
                key: "Tessera:Limits:MaxParts",
                limit: self.limits.max_parts.into(),
            });
        }
        Ok(())
    }

    /// The next bytes of the current part's body; `None` at its end.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, RelatedError> {
        if self.state != State::Body {
            return Ok(None);
        }
        loop {
            if let Some(at) = self.unread.find(&self.delimiter) {
                if at > 0 {
                    return Ok(Some(self.unread.take(at)));
                }
                self.unread.advance(self.delimiter.len());
                self.state = State::Headers;
                return Ok(None);
            }
            // Everything but a possible beginning of the delimiter belongs to the part.
            let safe = self.unread.len().saturating_sub(self.delimiter.len() - 1);
            if safe > 0 {
                return Ok(Some(self.unread.take(safe)));
            }
            if !self.fill().await? {
                return self.fail(RelatedError::Malformed(
                    "the body ends inside a part (no closing boundary)",
                ));
            }
        }
    }
}

/// What the bytes after a boundary (`view`, the first bytes held) say, `more` telling whether
/// the body may still bring more.
fn header_step(view: &[u8], delimiter: &[u8], max: usize, more: bool) -> HeaderStep {
    if view.starts_with(b"--") {
        return HeaderStep::Closed;
    }
    // The boundary line ends with optional transport padding (white space) and CRLF; then
    // headers up to an empty line (or none at all: the empty line follows at once).
    if let Some(line_end) = find(view, b"\r\n") {
        if !view[..line_end].iter().all(|&b| b == b' ' || b == b'\t') {
            return HeaderStep::Malformed(
                "a boundary is followed by more than white space on its line",
            );
        }
        // A delimiter right after the boundary line: a body part with neither headers nor
        // content (what .NET's MultipartContent sends when it has no parts). It holds no
        // instance, so it is not a part.
        let rest = &view[line_end + 2..];
        if rest.len() < delimiter.len() && delimiter.starts_with(rest) && more {
            return HeaderStep::Peek;
        }
        if rest.starts_with(delimiter) {
            return HeaderStep::Skip(line_end + 2 + delimiter.len());
        }
        let headers_start = line_end + 2;
        let block = &view[headers_start..];
        let end = if block.starts_with(b"\r\n") {
            Some(0)
        } else {
            find(block, b"\r\n\r\n").map(|at| at + 2)
        };
        if let Some(end) = end {
            if line_end > 64 || end > max {
                return HeaderStep::TooLong;
            }
            return HeaderStep::Part(parse_headers(&block[..end]), headers_start + end + 2);
        }
    }
    if view.len() > max + 64 + 4 {
        return HeaderStep::TooLong;
    }
    HeaderStep::More
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

/// Parses a header block (each line ending in CRLF).
fn parse_headers(block: &[u8]) -> Result<PartHeaders, RelatedError> {
    let mut content_type = None;
    for line in block.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let text = std::str::from_utf8(line)
            .map_err(|_| RelatedError::Malformed("a part header is not text"))?;
        let (name, value) = text
            .split_once(':')
            .ok_or(RelatedError::Malformed("a part header line has no colon"))?;
        if name.trim().eq_ignore_ascii_case("content-type") {
            content_type = Some(value.trim().to_owned());
        }
    }
    Ok(PartHeaders { content_type })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: RelatedLimits = RelatedLimits {
        max_parts: 3,
        max_part_header_bytes: 256,
        max_preamble_bytes: 64,
    };

    fn reader(
        body: &[u8],
        chunk: usize,
    ) -> RelatedReader<impl Stream<Item = Result<Bytes, axum::Error>> + Unpin> {
        let chunks: Vec<Result<Bytes, axum::Error>> = body
            .chunks(chunk)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        RelatedReader::new(futures::stream::iter(chunks), "b0und", LIMITS)
    }

    async fn read_all(
        body: &[u8],
        chunk: usize,
    ) -> Result<Vec<(Option<String>, Vec<u8>)>, RelatedError> {
        let mut reader = reader(body, chunk);
        let mut parts = Vec::new();
        while let Some(headers) = reader.next_part().await? {
            let mut bytes = Vec::new();
            while let Some(piece) = reader.next_chunk().await? {
                bytes.extend_from_slice(&piece);
            }
            parts.push((headers.content_type, bytes));
        }
        Ok(parts)
    }

    #[tokio::test]
    async fn parts_are_read_whatever_the_chunking() {
        let body = b"preamble\r\n--b0und\r\nContent-Type: application/dicom\r\n\r\none\r\n--b0und \r\n\r\ntwo\r\n--\r\n--b0und--\r\nepilogue";
        for chunk in [1, 2, 7, 1000] {
            let parts = read_all(body, chunk).await.unwrap();
            assert_eq!(
                parts,
                vec![
                    (Some("application/dicom".into()), b"one".to_vec()),
                    (None, b"two\r\n--".to_vec()),
                ],
                "chunk {chunk}"
            );
        }
    }

    #[tokio::test]
    async fn near_delimiters_split_anywhere_stay_in_the_body() {
        // Bodies holding every prefix of the delimiter, and a delimiter split at each byte.
        let body = b"--b0und\r\n\r\n\r\n\r\n-\r\n--\r\n--b\r\n--b0un\r\n--b0unx\r\n--b0und\r\nContent-Type: application/dicom\r\n\r\n\r\n--b0un\r\n--b0und--";
        for chunk in 1..=body.len() {
            let parts = read_all(body, chunk).await.unwrap();
            assert_eq!(
                parts,
                vec![
                    (
                        None,
                        b"\r\n\r\n-\r\n--\r\n--b\r\n--b0un\r\n--b0unx".to_vec()
                    ),
                    (Some("application/dicom".into()), b"\r\n--b0un".to_vec()),
                ],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn a_match_is_found_across_any_chunking() {
        let text = b"xx\r\n-\r\n--b0un\r\n--b0und tail \r\n--b0und";
        let needle = b"\r\n--b0und";
        for first in 0..text.len() {
            for second in first..text.len() {
                let mut unread = Unread::default();
                for piece in [&text[..first], &text[first..second], &text[second..]] {
                    unread.push(Bytes::copy_from_slice(piece));
                }
                assert_eq!(
                    unread.find(needle),
                    Some(13),
                    "split at {first} and {second}"
                );
                assert_eq!(unread.find(b"absent"), None);
                assert_eq!(unread.front(20), &text[..20]);
                assert_eq!(unread.len(), text.len());
            }
        }
    }

    #[tokio::test]
    async fn a_part_body_is_handed_on_in_the_chunks_it_arrived_in() {
        let chunk = Bytes::from_static(b"--b0und\r\n\r\nthe part's bytes\r\n--b0und--");
        let range = chunk.as_ptr_range();
        let pieces = vec![Ok::<_, axum::Error>(chunk.clone())];
        let mut reader = RelatedReader::new(futures::stream::iter(pieces), "b0und", LIMITS);
        assert!(reader.next_part().await.unwrap().is_some());
        let piece = reader.next_chunk().await.unwrap().unwrap();
        assert_eq!(&piece[..], b"the part's bytes");
        assert!(
            range.contains(&piece.as_ptr()),
            "the part's bytes were copied"
        );
        assert!(reader.next_chunk().await.unwrap().is_none());
        assert!(reader.next_part().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn rfc_2046_preamble_padding_epilogue_and_empty_parts() {
        // Preamble, transport padding after each boundary (spaces and tabs), an epilogue.
        let body = b"This is the preamble.\r\n--b0und \t \r\n\r\none\r\n--b0und\t\r\nContent-Type: application/dicom\r\n\r\ntwo\r\n--b0und--  \r\nepilogue --b0und\r\n";
        for chunk in [1, 3, 1000] {
            let parts = read_all(body, chunk).await.unwrap();
            assert_eq!(
                parts,
                vec![
                    (None, b"one".to_vec()),
                    (Some("application/dicom".into()), b"two".to_vec()),
                ],
                "chunk {chunk}"
            );
        }
        // No parts at all: only the close delimiter, or .NET's empty MultipartContent (a body
        // part with neither headers nor content), which the original answered with 204.
        for body in [
            &b"--b0und--\r\n"[..],
            b"--b0und\r\n\r\n--b0und--\r\n",
            b"--b0und--",
        ] {
            for chunk in [1, 2, 1000] {
                assert_eq!(read_all(body, chunk).await.unwrap(), vec![], "{body:?}");
            }
        }
        // A part with headers and no content is still a part.
        let empty_with_type = b"--b0und\r\nContent-Type: application/dicom\r\n\r\n\r\n--b0und--";
        assert_eq!(
            read_all(empty_with_type, 4).await.unwrap(),
            vec![(Some("application/dicom".into()), Vec::new())]
        );
        // Text after a boundary on its line is not padding.
        assert!(matches!(
            read_all(b"--b0und x\r\n\r\none\r\n--b0und--", 100).await,
            Err(RelatedError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn limits_are_named() {
        let long_preamble = [vec![b'x'; 1000], b"\r\n--b0und--".to_vec()].concat();
        let huge_header = [
            b"--b0und\r\nX: ".to_vec(),
            vec![b'y'; 10_000],
            b"\r\n\r\nbody\r\n--b0und--".to_vec(),
        ]
        .concat();
        let many = b"--b0und\r\n\r\na\r\n--b0und\r\n\r\nb\r\n--b0und\r\n\r\nc\r\n--b0und\r\n\r\nd\r\n--b0und--";
        let many_empty = b"--b0und\r\n\r\n--b0und\r\n\r\n--b0und\r\n\r\n--b0und\r\n\r\n--b0und--";
        for (body, key) in [
            (&long_preamble[..], "Tessera:Limits:MaxPreambleBytes"),
            (&huge_header[..], "Tessera:Limits:MaxPartHeaderBytes"),
            (&many[..], "Tessera:Limits:MaxParts"),
            (&many_empty[..], "Tessera:Limits:MaxParts"),
        ] {
            match read_all(body, 100).await {
                Err(RelatedError::Limit { key: k, .. }) => assert_eq!(k, key),
                other => panic!("expected {key}, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_body_without_its_closing_boundary_is_malformed() {
        let body = b"--b0und\r\n\r\npart that never ends";
        assert!(matches!(
            read_all(body, 5).await,
            Err(RelatedError::Malformed(_))
        ));
        assert!(matches!(
            read_all(b"no boundary here at all", 5).await,
            Err(RelatedError::Malformed(_))
        ));
    }
}
