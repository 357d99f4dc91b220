//! The bounds Tessera puts on what a request may make it hold, read or compute.
//!
//! One value, bound once from the `Tessera:Limits:*` keys and handed to every layer that reads
//! input, so a limit is enforced where the input arrives and named the same way everywhere.
//! Defaults are far above what real studies need and far below what hurts a process.

use std::time::Duration;

/// Every input limit of the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of one request body (413 beyond it).
    pub max_request_body_bytes: u64,
    /// Bytes of a DICOM header: everything before Pixel Data, or the whole data set when it has
    /// none (an encapsulated PDF or a structured report is all header).
    pub max_header_bytes: u64,
    /// Nesting depth of sequences in a data set.
    pub max_sequence_depth: u32,
    /// Bytes a deflated data set may inflate to.
    pub max_inflated_bytes: u64,
    /// Parts of one multipart/related request.
    pub max_parts: u32,
    /// Bytes of one part's header block.
    pub max_part_header_bytes: u32,
    /// Bytes before the first boundary of a multipart body.
    pub max_preamble_bytes: u32,
    /// Distinct frames one frames request may ask for.
    pub max_frames_per_request: u32,
    /// Query parameters of one QIDO request.
    pub max_query_parameters: u32,
    /// UIDs in one UID-list match.
    pub max_uid_list_length: u32,
    /// Words of a fuzzy person-name match.
    pub max_fuzzy_name_words: u32,
    /// STOW requests served at once by one process (503 with `Retry-After` beyond it).
    pub max_concurrent_uploads: u32,
    /// Time allowed to receive a request's headers.
    pub request_header_timeout: Duration,
    /// Time a request body may go without sending a byte.
    pub body_read_timeout: Duration,
    /// Time an idle keep-alive connection is kept open.
    pub keep_alive_timeout: Duration,
    /// Bytes of a stored instance read into memory to render or transcode it, and bytes its
    /// decoded pixel data may take; beyond it such a request is refused (406).
    pub max_decode_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        const MIB: u64 = 1024 * 1024;
        Self {
            max_request_body_bytes: 16 * 1024 * MIB,
            max_header_bytes: 64 * MIB,
            max_sequence_depth: 64,
            max_inflated_bytes: 32 * MIB,
            max_parts: 10_000,
            max_part_header_bytes: 16 * 1024,
            max_preamble_bytes: 64 * 1024,
            max_frames_per_request: 4_096,
            max_query_parameters: 100,
            max_uid_list_length: 1_000,
            max_fuzzy_name_words: 10,
            max_concurrent_uploads: 32,
            request_header_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(30),
            keep_alive_timeout: Duration::from_secs(20),
            max_decode_bytes: 256 * MIB,
        }
    }
}
