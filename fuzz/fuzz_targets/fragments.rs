//! The fragment scanner: encapsulated pixel data items fed as a stream of chunks.
//!
//! Input: `[mode, chunking, frames, start, rest…]`. `start` picks where the item sequence starts
//! in `rest`. Mode bit 0 clear: the chunks follow each other, as the service feeds them, and
//! the ranges found must lie inside the bytes fed. Mode bit 0 set: chunks come at offsets taken
//! from the input (gaps, overlaps, repeats, offsets near `u64::MAX`); only survival is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_dicom::FragmentScanner;
use tessera_fuzz::chunks;

fuzz_target!(|data: &[u8]| {
    let [mode, chunking, frames, start, rest @ ..] = data else {
        return;
    };
    let items_offset = (rest.len() * usize::from(*start) / 255) as u64;
    if mode & 1 == 0 {
        // A large base as well, as in a file with a big header.
        let base = if mode & 2 == 0 { 0 } else { 1 << 40 };
        let mut scanner = FragmentScanner::new(base + items_offset);
        let mut offset = base;
        for chunk in chunks(rest, *chunking) {
            scanner.feed(offset, chunk);
            offset += chunk.len() as u64;
        }
        for frames in [u64::from(*frames), 1, 2] {
            if let Some(ranges) = scanner.frame_ranges(frames) {
                assert_eq!(ranges.0.len() as u64, frames);
                let mut previous_end = base + items_offset;
                for range in &ranges.0 {
                    assert!(range.offset >= previous_end, "ranges overlap or go back");
                    previous_end = range.offset + range.length;
                    assert!(previous_end <= offset, "a range ends past the bytes fed");
                }
            }
        }
    } else {
        let mut scanner = FragmentScanner::new(items_offset);
        let mut pieces = chunks(rest, *chunking).peekable();
        let mut offset = 0u64;
        while let Some(chunk) = pieces.next() {
            // The first 2 bytes of each chunk move the next offset (also to the top of u64).
            let jump = match chunk {
                [a, b, ..] => i64::from(i16::from_le_bytes([*a, *b])),
                _ => 0,
            };
            offset = if jump == i64::from(i16::MIN) {
                u64::MAX - chunk.len() as u64 / 2
            } else {
                offset.saturating_add_signed(jump)
            };
            scanner.feed(offset, chunk);
            if pieces.peek().is_none() {
                let _ = scanner.frame_ranges(u64::from(*frames));
            }
        }
    }
});
