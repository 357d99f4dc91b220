//! Byte ranges of frames, so frames can be served by range reads (orig A.4 `_frames_range.json`).

use std::collections::BTreeMap;

/// One frame's bytes in the Part-10 file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRange {
    /// Absolute offset in the file.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
}

/// The ranges of every frame, by 0-based frame index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrameRanges(pub Vec<FrameRange>);

impl FrameRanges {
    /// Native pixel data: frames follow each other from `offset`.
    pub fn native(offset: u64, frame_size: u64, frames: u64, value_length: u64) -> Option<Self> {
        (frame_size > 0 && frame_size * frames <= value_length).then(|| {
            Self(
                (0..frames)
                    .map(|i| FrameRange {
                        offset: offset + i * frame_size,
                        length: frame_size,
                    })
                    .collect(),
            )
        })
    }

    /// The original's JSON: `{"0":{"offset":…,"length":…},…}`.
    pub fn to_json(&self) -> Vec<u8> {
        let map: BTreeMap<usize, serde_json::Value> = self
            .0
            .iter()
            .enumerate()
            .map(|(i, r)| {
                (
                    i,
                    serde_json::json!({"offset": r.offset, "length": r.length}),
                )
            })
            .collect();
        let object: serde_json::Map<String, serde_json::Value> =
            map.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        serde_json::Value::Object(object).to_string().into_bytes()
    }

    /// Parses the JSON the original (or Tessera) wrote.
    pub fn from_json(json: &[u8]) -> Option<Self> {
        let object: BTreeMap<String, serde_json::Value> = serde_json::from_slice(json).ok()?;
        let mut frames: Vec<(usize, FrameRange)> = object
            .into_iter()
            .map(|(key, value)| {
                Some((
                    key.parse().ok()?,
                    FrameRange {
                        offset: value.get("offset")?.as_u64()?,
                        length: value.get("length")?.as_u64()?,
                    },
                ))
            })
            .collect::<Option<_>>()?;
        frames.sort_by_key(|(i, _)| *i);
        Some(Self(frames.into_iter().map(|(_, r)| r).collect()))
    }
}

/// Follows an encapsulated pixel data item sequence (PS3.5 A.4) as the file streams past and
/// records each fragment's range. Fed every chunk of the file with its absolute offset; bytes
/// before `items_offset` are ignored. Hand-written because it must work on a stream, without
/// the whole file: dicom-rs parses fragments only from a complete reader.
#[derive(Debug)]
pub struct FragmentScanner {
    /// Absolute offset of the next item header.
    next_item: u64,
    header: Vec<u8>,
    fragments: Vec<FrameRange>,
    seen_offset_table: bool,
    done: bool,
    broken: bool,
}

impl FragmentScanner {
    /// A scanner for an item sequence starting at `items_offset`.
    pub fn new(items_offset: u64) -> Self {
        Self {
            next_item: items_offset,
            header: Vec::with_capacity(8),
            fragments: Vec::new(),
            seen_offset_table: false,
            done: false,
            broken: false,
        }
    }

    /// Feeds `chunk`, which starts at absolute `offset` in the file. Chunks are meant to come in
    /// order; any other order marks the scan broken or is ignored, and never panics.
    pub fn feed(&mut self, offset: u64, chunk: &[u8]) {
        let Some(end) = offset.checked_add(chunk.len() as u64) else {
            self.broken = true;
            return;
        };
        while !self.done && !self.broken && self.next_item < end {
            let header_start = self.next_item + self.header.len() as u64;
            if header_start < offset {
                // Bytes of this header were skipped; cannot happen when fed in order.
                self.broken = true;
                return;
            }
            if header_start >= end {
                // This chunk lies before the header bytes still missing (fed again, out of
                // order): nothing in it is new.
                return;
            }
            let from = (header_start - offset) as usize;
            let want = 8 - self.header.len();
            let take = want.min(chunk.len() - from);
            self.header.extend_from_slice(&chunk[from..from + take]);
            if self.header.len() < 8 {
                return;
            }
            let group = u16::from_le_bytes([self.header[0], self.header[1]]);
            let element = u16::from_le_bytes([self.header[2], self.header[3]]);
            let length = u32::from_le_bytes([
                self.header[4],
                self.header[5],
                self.header[6],
                self.header[7],
            ]);
            self.header.clear();
            match (group, element) {
                (0xFFFE, 0xE000) if length != u32::MAX => {
                    // Offsets past u64::MAX cannot be in any file: the scan is broken.
                    let Some((value, next)) = self
                        .next_item
                        .checked_add(8)
                        .and_then(|value| Some((value, value.checked_add(u64::from(length))?)))
                    else {
                        self.broken = true;
                        return;
                    };
                    if self.seen_offset_table {
                        self.fragments.push(FrameRange {
                            offset: value,
                            length: u64::from(length),
                        });
                    }
                    self.seen_offset_table = true;
                    self.next_item = next;
                }
                (0xFFFE, 0xE0DD) => self.done = true,
                _ => self.broken = true,
            }
        }
    }

    /// The frame ranges when there is exactly one fragment per frame, as the original requires.
    pub fn frame_ranges(&self, frames: u64) -> Option<FrameRanges> {
        (self.done && !self.broken && self.fragments.len() as u64 == frames && frames > 0)
            .then(|| FrameRanges(self.fragments.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(tag: (u16, u16), payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&tag.0.to_le_bytes());
        out.extend_from_slice(&tag.1.to_le_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn fragments_are_found_whatever_the_chunking() {
        let mut stream = vec![0u8; 100];
        stream.extend(item((0xFFFE, 0xE000), &[]));
        stream.extend(item((0xFFFE, 0xE000), b"frame-one"));
        stream.extend(item((0xFFFE, 0xE000), b"second"));
        stream.extend(item((0xFFFE, 0xE0DD), &[]));
        for chunk in [1, 3, 7, 1000] {
            let mut scanner = FragmentScanner::new(100);
            for (i, piece) in stream.chunks(chunk).enumerate() {
                scanner.feed((i * chunk) as u64, piece);
            }
            let ranges = scanner.frame_ranges(2).expect("two frames");
            assert_eq!(
                ranges.0[0],
                FrameRange {
                    offset: 116,
                    length: 9
                }
            );
            assert_eq!(
                ranges.0[1],
                FrameRange {
                    offset: 133,
                    length: 6
                }
            );
            assert!(scanner.frame_ranges(3).is_none());
        }
    }

    /// Found by `fuzz/fuzz_targets/fragments.rs`: a chunk fed again after part of an item
    /// header had arrived underflowed `chunk.len() - from` and panicked.
    #[test]
    fn chunks_out_of_order_do_not_panic() {
        let mut scanner = FragmentScanner::new(0);
        scanner.feed(0, &[0; 7]);
        scanner.feed(0, &[0]);
        assert!(scanner.frame_ranges(1).is_none());

        // Offsets at the top of u64: the end of a chunk or of an item cannot be computed.
        let mut scanner = FragmentScanner::new(u64::MAX - 4);
        scanner.feed(u64::MAX - 4, &[0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0]);
        assert!(scanner.frame_ranges(1).is_none());
        let mut scanner = FragmentScanner::new(u64::MAX - 20);
        scanner.feed(
            u64::MAX - 20,
            &[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFE],
        );
        assert!(scanner.frame_ranges(1).is_none());
    }

    #[test]
    fn json_round_trips_in_the_original_shape() {
        let ranges = FrameRanges(vec![FrameRange {
            offset: 10,
            length: 20,
        }]);
        assert_eq!(
            String::from_utf8(ranges.to_json()).unwrap(),
            r#"{"0":{"offset":10,"length":20}}"#
        );
        assert_eq!(FrameRanges::from_json(&ranges.to_json()), Some(ranges));
    }
}
