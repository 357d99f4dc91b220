//! Byte ranges of frames, so frames can be served by range reads (orig A.4 `_frames_range.json`).

use std::collections::BTreeMap;

use crate::walk::{DataSetWalker, MAX_RECORDED_FRAGMENTS};

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
    /// `None` when the frames do not fit the value, or there are more than
    /// [`MAX_RECORDED_FRAGMENTS`] of them.
    pub fn native(offset: u64, frame_size: u64, frames: u64, value_length: u64) -> Option<Self> {
        let fits = frame_size
            .checked_mul(frames)
            .is_some_and(|total| total <= value_length);
        (frame_size > 0 && fits && frames <= MAX_RECORDED_FRAGMENTS as u64).then(|| {
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
/// records each fragment's range, for files whose header was read elsewhere (adoption). Fed
/// every chunk of the file with its absolute offset; bytes before `items_offset` are ignored.
#[derive(Debug)]
pub struct FragmentScanner(DataSetWalker);

impl FragmentScanner {
    /// A scanner for an item sequence starting at `items_offset`.
    pub fn new(items_offset: u64) -> Self {
        Self(DataSetWalker::in_pixel_items(items_offset))
    }

    /// Feeds `chunk`, which starts at absolute `offset` in the file. A broken item sequence
    /// only means there is no frame table.
    pub fn feed(&mut self, offset: u64, chunk: &[u8]) {
        let end = offset.saturating_add(chunk.len() as u64);
        let Some(start) = self.0.position().checked_sub(offset) else {
            return;
        };
        if let Ok(from) = usize::try_from(start)
            && offset.saturating_add(start) < end
        {
            let _ = self.0.feed(offset + start, &chunk[from..]);
        }
    }

    /// The frame ranges when there is exactly one fragment per frame, as the original requires.
    pub fn frame_ranges(&self, frames: u64) -> Option<FrameRanges> {
        FrameRanges::encapsulated(&self.0, frames)
    }
}

impl FrameRanges {
    /// Encapsulated pixel data: one fragment per frame, as the original requires, from a walk
    /// that has passed the end of the item sequence.
    pub fn encapsulated(walker: &DataSetWalker, frames: u64) -> Option<Self> {
        let fragments = walker.fragments()?;
        (walker.pixel_items_closed() && fragments.len() as u64 == frames && frames > 0)
            .then(|| Self(fragments.to_vec()))
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

    /// Found by `fuzz/fuzz_targets/fragments.rs` (on the scanner before the walker): chunks fed
    /// again out of order, and offsets at the top of u64, must not panic.
    #[test]
    fn chunks_out_of_order_and_huge_offsets_do_not_panic() {
        let mut scanner = FragmentScanner::new(0);
        scanner.feed(0, &[0; 7]);
        scanner.feed(0, &[0]);
        assert!(scanner.frame_ranges(1).is_none());
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
