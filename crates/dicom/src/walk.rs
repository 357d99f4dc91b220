//! A bounded walk over the element structure of a data set as its bytes stream past.
//!
//! Hand-written because dicom-rs trusts what a file declares: it allocates a value's declared
//! length before the bytes arrive and recurses once per nested sequence, so a 1 KB upload can
//! ask for 4 GB and a 72 KB one can overflow the stack. The walker reads only element headers
//! (at most 12 bytes held at a time), skips values, and checks each declared length against
//! its container, the header limit and the bytes that actually arrive, and the nesting depth
//! against its limit. dicom-rs is then handed only byte ranges the walker has proven whole and
//! shallow. At the end of the stream the walker knows whether the instance is complete: no
//! element, pixel data or item sequence is cut short.

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;

use crate::frames::FrameRange;
use crate::{DicomError, PixelData};

/// Most fragments (frames) recorded for one instance; beyond it no frame table is kept, so a
/// crafted file cannot make the table grow faster than the bytes it brings.
pub const MAX_RECORDED_FRAGMENTS: usize = 1_000_000;

const ITEM: (u16, u16) = (0xFFFE, 0xE000);
const ITEM_END: (u16, u16) = (0xFFFE, 0xE00D);
const SEQUENCE_END: (u16, u16) = (0xFFFE, 0xE0DD);
const PIXEL_DATA: (u16, u16) = (0x7FE0, 0x0010);

/// How a data set is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Encoding {
    /// Explicit VR (else implicit).
    pub explicit_vr: bool,
    /// Big endian (retired Explicit VR Big Endian).
    pub big_endian: bool,
}

impl Encoding {
    /// Explicit VR Little Endian, the encoding of file meta information and encapsulated syntaxes.
    pub const EXPLICIT_LE: Self = Self {
        explicit_vr: true,
        big_endian: false,
    };
    const IMPLICIT_LE: Self = Self {
        explicit_vr: false,
        big_endian: false,
    };

    fn u16(self, bytes: &[u8]) -> u16 {
        let b = [bytes[0], bytes[1]];
        if self.big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    }

    fn u32(self, bytes: &[u8]) -> u32 {
        let b = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if self.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Sequence,
    Item,
    /// Items of encapsulated pixel data (fragments), closed by a sequence delimiter.
    PixelItems {
        top_level: bool,
    },
}

#[derive(Clone, Copy, Debug)]
struct Container {
    kind: Kind,
    /// Absolute end for a defined length.
    end: Option<u64>,
    /// Encoding of what the container holds (a UN sequence of undefined length holds implicit
    /// VR little endian, CP-246).
    encoding: Encoding,
    tag: (u16, u16),
}

/// Where the walk found the top-level Pixel Data element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PixelDataStart {
    /// Absolute offset of the element's header: the header of the instance ends here.
    pub element_offset: u64,
    /// Where its value is.
    pub pixel_data: PixelData,
}

/// The walk of one data set. Fed every byte from `start` on, in order, with absolute offsets.
#[derive(Clone, Debug)]
pub struct DataSetWalker {
    encoding: Encoding,
    /// Absolute offset of the next structural byte (values are skipped).
    pos: u64,
    header: [u8; 12],
    header_len: usize,
    stack: Vec<Container>,
    max_depth: u32,
    /// No element before Pixel Data may end beyond this absolute offset.
    header_limit: u64,
    pixel: Option<PixelDataStart>,
    fragments: Vec<FrameRange>,
    seen_offset_table: bool,
    too_many_fragments: bool,
    error: Option<DicomError>,
}

fn tag_name(tag: (u16, u16)) -> String {
    format!("({:04X},{:04X})", tag.0, tag.1)
}

/// Whether an explicit VR has the 4-byte length form (PS3.5 7.1.2). As in dicom-rs, which reads
/// a VR it does not know as UN: only the VRs listed with a 2-byte length have one, and any other
/// two bytes are read as a long VR. Deciding otherwise for an unknown VR (found by the `header`
/// fuzz target) made dicom-rs, parsing the same bytes after the walker had passed them, read a
/// different length and allocate it (775 MB from a 595-byte file).
fn is_long_vr(vr: &[u8]) -> bool {
    !matches!(
        vr,
        b"AE"
            | b"AS"
            | b"AT"
            | b"CS"
            | b"DA"
            | b"DS"
            | b"DT"
            | b"FL"
            | b"FD"
            | b"IS"
            | b"LO"
            | b"LT"
            | b"PN"
            | b"SH"
            | b"SL"
            | b"SS"
            | b"ST"
            | b"TM"
            | b"UI"
            | b"UL"
            | b"US"
    )
}

/// Bytes of one value of a binary numeric VR (1 for every other VR): the VR from the element
/// header in explicit VR, from the dictionary in implicit VR (group lengths are UL). dicom-rs
/// reads such a value as `length / size` numbers but counts `length` bytes, so a length that is
/// not a multiple would put its reader out of step with the walker's (found by the header fuzz
/// target, where the misread bytes then declared gigabytes).
fn binary_value_size(vr: Option<[u8; 2]>, tag: (u16, u16)) -> u64 {
    let vr = match vr {
        Some(bytes) => VR::from_binary(bytes),
        None => StandardDataDictionary
            .by_tag(Tag(tag.0, tag.1))
            .map(|entry| entry.vr().relaxed()),
    };
    match vr {
        Some(VR::US | VR::SS) => 2,
        Some(VR::UL | VR::SL | VR::FL | VR::AT) => 4,
        Some(VR::FD | VR::SV | VR::UV) => 8,
        _ => 1,
    }
}

fn is_sequence_in_dictionary(tag: (u16, u16)) -> bool {
    StandardDataDictionary
        .by_tag(Tag(tag.0, tag.1))
        .is_some_and(|entry| entry.vr().relaxed() == VR::SQ)
}

impl DataSetWalker {
    /// A walk of a data set starting at absolute offset `start`.
    pub fn new(start: u64, encoding: Encoding, max_depth: u32, header_limit: u64) -> Self {
        Self {
            encoding,
            pos: start,
            header: [0; 12],
            header_len: 0,
            stack: Vec::new(),
            max_depth,
            header_limit,
            pixel: None,
            fragments: Vec::new(),
            seen_offset_table: false,
            too_many_fragments: false,
            error: None,
        }
    }

    /// A walk that starts inside top-level encapsulated pixel data, at its first item (the
    /// basic offset table), to find fragment ranges in a file whose header was read before.
    pub fn in_pixel_items(items_offset: u64) -> Self {
        let mut walker = Self::new(items_offset, Encoding::EXPLICIT_LE, u32::MAX, u64::MAX);
        walker.stack.push(Container {
            kind: Kind::PixelItems { top_level: true },
            end: None,
            encoding: Encoding::EXPLICIT_LE,
            tag: PIXEL_DATA,
        });
        walker.pixel = Some(PixelDataStart {
            element_offset: items_offset.saturating_sub(12),
            pixel_data: PixelData::Encapsulated { items_offset },
        });
        walker
    }

    /// Absolute offset of the next byte the walk needs.
    pub fn position(&self) -> u64 {
        self.pos.saturating_add(self.header_len as u64)
    }

    /// The top-level Pixel Data element, once the walk has reached it.
    pub fn pixel_data(&self) -> Option<PixelDataStart> {
        self.pixel
    }

    /// The first problem found, if any: the walk stops there.
    pub fn error(&self) -> Option<&DicomError> {
        self.error.as_ref()
    }

    /// Fragments of the top-level encapsulated pixel data seen so far (without the offset
    /// table), unless there were more than [`MAX_RECORDED_FRAGMENTS`].
    pub fn fragments(&self) -> Option<&[FrameRange]> {
        (!self.too_many_fragments).then_some(self.fragments.as_slice())
    }

    /// Whether the top-level pixel item sequence was closed by its delimiter.
    pub fn pixel_items_closed(&self) -> bool {
        matches!(
            self.pixel,
            Some(PixelDataStart {
                pixel_data: PixelData::Encapsulated { .. },
                ..
            })
        ) && !self
            .stack
            .iter()
            .any(|c| c.kind == Kind::PixelItems { top_level: true })
    }

    /// Feeds `chunk`, which starts at absolute `offset`; returns the first problem found.
    pub fn feed(&mut self, offset: u64, chunk: &[u8]) -> Result<(), DicomError> {
        if self.error.is_none()
            && let Err(error) = self.walk(offset, chunk)
        {
            self.error = Some(error);
        }
        match &self.error {
            Some(error) => Err(error.clone()),
            None => Ok(()),
        }
    }

    /// The stream ended after `total` bytes: an error unless every element, item and sequence
    /// that was opened is complete.
    pub fn finish(&self, total: u64) -> Result<(), DicomError> {
        if let Some(error) = &self.error {
            return Err(error.clone());
        }
        if self.header_len > 0 || self.pos > total {
            let at = match self.stack.iter().rev().find(|c| c.kind != Kind::Item) {
                Some(c) if matches!(c.kind, Kind::PixelItems { .. }) => {
                    format!(" inside the pixel data {}", tag_name(c.tag))
                }
                Some(c) => format!(" inside the sequence {}", tag_name(c.tag)),
                None => String::new(),
            };
            return Err(DicomError::Truncated(format!(
                "the instance ends after {total} bytes{at}, in an element that needs {} bytes",
                self.pos.max(total + self.header_len as u64)
            )));
        }
        if let Some(open) = self.stack.last() {
            return Err(DicomError::Truncated(format!(
                "the instance ends after {total} bytes before {} {} is closed",
                match open.kind {
                    Kind::Sequence => "the sequence",
                    Kind::Item => "an item of",
                    Kind::PixelItems { .. } => "the encapsulated pixel data",
                },
                tag_name(open.tag)
            )));
        }
        Ok(())
    }

    fn depth(&self) -> u32 {
        self.stack.iter().filter(|c| c.kind != Kind::Item).count() as u32
    }

    fn walk(&mut self, offset: u64, chunk: &[u8]) -> Result<(), DicomError> {
        let end = offset.saturating_add(chunk.len() as u64);
        loop {
            while let Some(top) = self.stack.last() {
                if top.end == Some(self.pos) {
                    self.stack.pop();
                } else {
                    break;
                }
            }
            let at = self.position();
            if at >= end {
                return Ok(());
            }
            if at < offset {
                return Err(DicomError::Malformed("bytes fed out of order".into()));
            }
            let encoding = self.stack.last().map_or(self.encoding, |c| c.encoding);
            let in_pixel_items = matches!(
                self.stack.last().map(|c| c.kind),
                Some(Kind::PixelItems { .. })
            );
            // Tag first, then as much of the header as the tag and VR call for.
            let needed = if self.header_len < 6 {
                6
            } else {
                let group = encoding.u16(&self.header[0..2]);
                if group == 0xFFFE || in_pixel_items || !encoding.explicit_vr {
                    8
                } else if is_long_vr(&self.header[4..6]) {
                    12
                } else {
                    8
                }
            };
            let from = (at - offset) as usize;
            let take = (needed - self.header_len).min(chunk.len() - from);
            self.header[self.header_len..self.header_len + take]
                .copy_from_slice(&chunk[from..from + take]);
            self.header_len += take;
            if self.header_len < needed || needed == 6 {
                continue;
            }
            let header_len = self.header_len;
            self.header_len = 0;
            self.element(encoding, header_len, in_pixel_items)?;
        }
    }

    /// Handles one complete element header of `header_len` bytes at `self.pos`.
    fn element(
        &mut self,
        encoding: Encoding,
        header_len: usize,
        in_pixel_items: bool,
    ) -> Result<(), DicomError> {
        let h = self.header;
        let tag = (encoding.u16(&h[0..2]), encoding.u16(&h[2..4]));
        let (vr, length) = if header_len == 12 {
            (Some([h[4], h[5]]), encoding.u32(&h[8..12]))
        } else if tag.0 == 0xFFFE || in_pixel_items || !encoding.explicit_vr {
            (None, encoding.u32(&h[4..8]))
        } else {
            (Some([h[4], h[5]]), u32::from(encoding.u16(&h[6..8])))
        };
        let undefined = length == u32::MAX;
        // Offsets past u64::MAX are in no file.
        let overflow =
            || DicomError::Malformed("an element lies beyond any possible offset".into());
        let value_at = self
            .pos
            .checked_add(header_len as u64)
            .ok_or_else(overflow)?;
        let value_end = value_at
            .checked_add(u64::from(length))
            .ok_or_else(overflow)?;
        let parent = self.stack.last().copied();
        let within_parent = |end: u64| parent.and_then(|p| p.end).is_none_or(|limit| end <= limit);
        match tag {
            ITEM => match parent.map(|p| p.kind) {
                Some(Kind::PixelItems { top_level }) => {
                    if undefined {
                        return Err(DicomError::Malformed(
                            "a pixel data fragment has an undefined length".into(),
                        ));
                    }
                    if top_level {
                        self.record_fragment(value_at, u64::from(length));
                    }
                    self.pos = value_end;
                }
                Some(Kind::Sequence) => {
                    let end = (!undefined).then_some(value_end);
                    if end.is_some_and(|e| !within_parent(e)) {
                        return Err(overrun(tag));
                    }
                    self.pos = value_at;
                    self.stack.push(Container {
                        kind: Kind::Item,
                        end,
                        encoding,
                        tag: parent.map_or(tag, |p| p.tag),
                    });
                }
                _ => return Err(DicomError::Malformed("an item outside a sequence".into())),
            },
            ITEM_END => match parent {
                Some(Container {
                    kind: Kind::Item,
                    end: None,
                    ..
                }) => {
                    self.stack.pop();
                    self.pos = value_at;
                }
                _ => return Err(DicomError::Malformed("an unexpected item delimiter".into())),
            },
            SEQUENCE_END => match parent {
                Some(Container {
                    kind: Kind::Sequence | Kind::PixelItems { .. },
                    end: None,
                    ..
                }) => {
                    self.stack.pop();
                    self.pos = value_at;
                }
                _ => {
                    return Err(DicomError::Malformed(
                        "an unexpected sequence delimiter".into(),
                    ));
                }
            },
            _ if tag.0 == 0xFFFE => {
                return Err(DicomError::Malformed(format!(
                    "an unknown delimiter {}",
                    tag_name(tag)
                )));
            }
            _ => {
                if matches!(
                    parent.map(|p| p.kind),
                    Some(Kind::Sequence | Kind::PixelItems { .. })
                ) {
                    return Err(DicomError::Malformed(format!(
                        "element {} inside a sequence but outside an item",
                        tag_name(tag)
                    )));
                }
                if let Some(vr) = vr
                    && !vr.iter().all(u8::is_ascii_uppercase)
                {
                    return Err(DicomError::Malformed(format!(
                        "element {} has no valid VR",
                        tag_name(tag)
                    )));
                }
                let top_level = parent.is_none();
                let is_pixel_data = tag == PIXEL_DATA;
                let sequence = match vr {
                    Some(vr) => &vr == b"SQ" || (&vr == b"UN" && undefined),
                    None => !is_pixel_data && (undefined || is_sequence_in_dictionary(tag)),
                };
                if !undefined && !within_parent(value_end) {
                    return Err(overrun(tag));
                }
                let size = binary_value_size(vr, tag);
                if !undefined && !sequence && u64::from(length) % size != 0 {
                    return Err(DicomError::Malformed(format!(
                        "element {} holds {length} bytes, not a whole number of {size}-byte values",
                        tag_name(tag)
                    )));
                }
                if self.pixel.is_none()
                    && !(top_level && is_pixel_data)
                    && !undefined
                    && value_end > self.header_limit
                {
                    return Err(DicomError::HeaderTooLarge(format!(
                        "element {} declares {length} bytes, beyond the header limit",
                        tag_name(tag)
                    )));
                }
                if top_level && is_pixel_data && self.pixel.is_none() {
                    self.pixel = Some(PixelDataStart {
                        element_offset: self.pos,
                        pixel_data: if undefined {
                            PixelData::Encapsulated {
                                items_offset: value_at,
                            }
                        } else {
                            PixelData::Native {
                                offset: value_at,
                                length: u64::from(length),
                            }
                        },
                    });
                }
                if sequence || (undefined && is_pixel_data) {
                    if self.depth() >= self.max_depth {
                        return Err(DicomError::TooDeep(self.max_depth));
                    }
                    let inner = match vr {
                        Some(vr) if &vr == b"UN" => Encoding::IMPLICIT_LE,
                        _ => encoding,
                    };
                    self.pos = value_at;
                    self.stack.push(Container {
                        kind: if sequence {
                            Kind::Sequence
                        } else {
                            Kind::PixelItems { top_level }
                        },
                        end: (!undefined).then_some(value_end),
                        encoding: inner,
                        tag,
                    });
                } else if undefined {
                    return Err(DicomError::Malformed(format!(
                        "element {} has an undefined length",
                        tag_name(tag)
                    )));
                } else {
                    self.pos = value_end;
                }
            }
        }
        Ok(())
    }

    fn record_fragment(&mut self, offset: u64, length: u64) {
        if !self.seen_offset_table {
            self.seen_offset_table = true;
            return;
        }
        if self.fragments.len() >= MAX_RECORDED_FRAGMENTS {
            self.too_many_fragments = true;
            self.fragments = Vec::new();
        }
        if !self.too_many_fragments {
            self.fragments.push(FrameRange { offset, length });
        }
    }
}

fn overrun(tag: (u16, u16)) -> DicomError {
    DicomError::Malformed(format!(
        "element {} runs past the end of its sequence or item",
        tag_name(tag)
    ))
}

/// Where the file meta information (group 0002, always explicit VR little endian) that starts at
/// `start` ends, once `prefix` holds all of it; `None` while more bytes are needed. Checks each
/// declared length before dicom-rs reads the group.
pub fn meta_end(prefix: &[u8], start: usize, limit: usize) -> Result<Option<usize>, DicomError> {
    let mut pos = start;
    loop {
        let Some(head) = prefix.get(pos..pos + 8) else {
            return Ok(None);
        };
        let group = u16::from_le_bytes([head[0], head[1]]);
        if group != 0x0002 {
            return Ok(Some(pos));
        }
        let (header, length) = if is_long_vr(&head[4..6]) {
            let Some(long) = prefix.get(pos + 8..pos + 12) else {
                return Ok(None);
            };
            (12, u32::from_le_bytes([long[0], long[1], long[2], long[3]]))
        } else {
            (8, u32::from(u16::from_le_bytes([head[6], head[7]])))
        };
        if length == u32::MAX {
            return Err(DicomError::Malformed(
                "file meta information with an undefined length".into(),
            ));
        }
        let next = pos + header + length as usize;
        if next > limit {
            return Err(DicomError::HeaderTooLarge(format!(
                "file meta element (0002,{:04X}) declares {length} bytes, beyond the header limit",
                u16::from_le_bytes([head[2], head[3]])
            )));
        }
        pos = next;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Found by the `header` fuzz target: (0002,0002) with the unknown VR `TI` and a 2-byte
    /// length of 26. dicom-rs reads an unknown VR as UN, whose length is the next 4 bytes (here
    /// `1.2.` = 775,040,561), so the walker must read the same length and refuse it.
    #[test]
    fn an_unknown_vr_has_a_4_byte_length_as_in_dicom_rs() {
        let mut meta = vec![0x02, 0x00, 0x02, 0x00, b'T', b'I', 0x1A, 0x00];
        meta.extend_from_slice(b"1.2.840.10008.5.1.4.1.1.7\0");
        assert!(matches!(
            meta_end(&meta, 0, 1 << 20),
            Err(DicomError::HeaderTooLarge(_))
        ));
        assert!(is_long_vr(b"TI") && is_long_vr(b"UN") && is_long_vr(b"OB"));
        assert!(!is_long_vr(b"UI") && !is_long_vr(b"US"));
    }

    /// Found by the `header` fuzz target: a group length (UL) of 2 or 7 bytes in implicit VR,
    /// which dicom-rs would read out of step with the walker.
    #[test]
    fn binary_values_must_be_whole() {
        for (tag, length) in [
            ((0x0005u16, 0x0000u16), 2u32),
            ((0x0000, 0x0000), 7),
            ((0x0028, 0x0010), 3),
        ] {
            let mut bytes = Vec::new();
            bytes.extend_from_slice(&tag.0.to_le_bytes());
            bytes.extend_from_slice(&tag.1.to_le_bytes());
            bytes.extend_from_slice(&length.to_le_bytes());
            bytes.extend(vec![0u8; length as usize]);
            let mut walker = DataSetWalker::new(0, Encoding::IMPLICIT_LE, 8, 1 << 20);
            assert!(
                matches!(walker.feed(0, &bytes), Err(DicomError::Malformed(_))),
                "{tag:?} of {length} bytes"
            );
        }
        let mut walker = DataSetWalker::new(0, Encoding::EXPLICIT_LE, 8, 1 << 20);
        assert!(
            walker
                .feed(0, &element((0x0028, 0x0010), b"US", &[1, 0, 0]))
                .is_err()
        );
        let mut walker = DataSetWalker::new(0, Encoding::EXPLICIT_LE, 8, 1 << 20);
        assert!(
            walker
                .feed(0, &element((0x0028, 0x0010), b"US", &[1, 0]))
                .is_ok()
        );
    }

    /// One Explicit VR Little Endian element (a long VR's header has 12 bytes).
    pub(crate) fn element(tag: (u16, u16), vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&tag.0.to_le_bytes());
        out.extend_from_slice(&tag.1.to_le_bytes());
        out.extend_from_slice(vr);
        if is_long_vr(vr) {
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        } else {
            out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        }
        out.extend_from_slice(value);
        out
    }

    fn delimiter(tag: (u16, u16), length: u32) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&tag.0.to_le_bytes());
        out.extend_from_slice(&tag.1.to_le_bytes());
        out.extend_from_slice(&length.to_le_bytes());
        out
    }

    fn undefined_sequence(tag: (u16, u16)) -> Vec<u8> {
        let vr = if tag == PIXEL_DATA { b"OB" } else { b"SQ" };
        let mut out = Vec::new();
        out.extend_from_slice(&tag.0.to_le_bytes());
        out.extend_from_slice(&tag.1.to_le_bytes());
        out.extend_from_slice(vr);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&u32::MAX.to_le_bytes());
        out
    }

    fn nested(depth: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..depth {
            out.extend(undefined_sequence((0x0040, 0xA730)));
            out.extend(delimiter(ITEM, u32::MAX));
        }
        for _ in 0..depth {
            out.extend(delimiter(ITEM_END, 0));
            out.extend(delimiter(SEQUENCE_END, 0));
        }
        out
    }

    fn walk_all(bytes: &[u8], chunk: usize, depth: u32) -> Result<DataSetWalker, DicomError> {
        let mut walker = DataSetWalker::new(0, Encoding::EXPLICIT_LE, depth, 1 << 20);
        for (i, piece) in bytes.chunks(chunk).enumerate() {
            walker.feed((i * chunk) as u64, piece)?;
        }
        walker.finish(bytes.len() as u64)?;
        Ok(walker)
    }

    #[test]
    fn nesting_within_the_limit_walks_whatever_the_chunking() {
        let bytes = nested(10);
        for chunk in [1, 5, 13, 4096] {
            walk_all(&bytes, chunk, 10).unwrap();
        }
    }

    #[test]
    fn nesting_beyond_the_limit_fails_without_recursion() {
        let bytes = nested(100_000);
        assert_eq!(
            walk_all(&bytes, 4096, 64).err(),
            Some(DicomError::TooDeep(64))
        );
    }

    #[test]
    fn a_huge_declared_length_fails_at_once() {
        let mut bytes = element((0x0010, 0x0010), b"PN", b"DOE^JOHN");
        bytes.extend_from_slice(&[0x09, 0x00, 0x10, 0x10, b'O', b'B', 0, 0]);
        bytes.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        let mut walker = DataSetWalker::new(0, Encoding::EXPLICIT_LE, 64, 1 << 20);
        assert!(matches!(
            walker.feed(0, &bytes),
            Err(DicomError::HeaderTooLarge(_))
        ));
    }

    #[test]
    fn truncation_is_found_in_values_items_and_sequences() {
        let mut whole = element((0x0010, 0x0010), b"PN", b"DOE^JOHN");
        whole.extend(undefined_sequence((0x7FE0, 0x0010)));
        whole.extend(delimiter(ITEM, 0));
        whole.extend(delimiter(ITEM, 4));
        whole.extend_from_slice(b"abcd");
        whole.extend(delimiter(SEQUENCE_END, 0));
        let walker = walk_all(&whole, 3, 8).unwrap();
        assert_eq!(walker.fragments().map(<[_]>::len), Some(1));
        assert!(walker.pixel_items_closed());
        // The first 16 bytes are one whole element: any cut after it leaves something open.
        for cut in (1..16).chain(17..whole.len()) {
            let mut walker = DataSetWalker::new(0, Encoding::EXPLICIT_LE, 8, 1 << 20);
            walker.feed(0, &whole[..cut]).unwrap();
            assert!(
                matches!(walker.finish(cut as u64), Err(DicomError::Truncated(_))),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn an_element_may_not_overrun_its_item() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&[0x40, 0x00, 0x30, 0xA7, b'S', b'Q', 0, 0]);
        bytes.extend_from_slice(&20u32.to_le_bytes());
        bytes.extend(delimiter(ITEM, 12));
        bytes.extend(element((0x0010, 0x0010), b"PN", b"DOE^JOHN"));
        assert!(matches!(
            walk_all(&bytes, 4096, 8),
            Err(DicomError::Malformed(_))
        ));
    }

    #[test]
    fn meta_end_needs_every_declared_byte() {
        let meta = element((0x0002, 0x0010), b"UI", b"1.2.840.10008.1.2.1\0");
        let mut bytes = meta.clone();
        bytes.extend(element((0x0008, 0x0018), b"UI", b"1.2\0"));
        assert_eq!(meta_end(&bytes, 0, 1 << 20), Ok(Some(meta.len())));
        assert_eq!(meta_end(&bytes[..meta.len() - 1], 0, 1 << 20), Ok(None));
        let mut huge = vec![0x02, 0x00, 0x01, 0x00, b'O', b'B', 0, 0];
        huge.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        assert!(matches!(
            meta_end(&huge, 0, 1 << 20),
            Err(DicomError::HeaderTooLarge(_))
        ));
    }
}
