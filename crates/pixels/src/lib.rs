//! Tessera's pixel work over dicom-rs's `dicom-pixeldata` and the `image` crate: rendered images
//! of one frame (PS3.18 §8.3.5, §10.4.1.1.3: JPEG or PNG, `viewport`, `quality`, windowing from
//! the data set's VOI attributes or the `window` parameter) and transcoding to Explicit VR Little
//! Endian (orig D.3: from .1.2, .1.2.1, .1.2.2, .1.2.4.50, .57, .70, .90, .91 and .1.2.5).
//!
//! Decoding needs the instance in memory: callers hand over at most `max_decode_bytes` of
//! Part-10 bytes, and every operation checks the decoded size against the same bound *before*
//! it decodes, so no request can make Tessera allocate more than about twice that bound.
//!
//! **Invariant:** no IO; CPU-bound, so callers run it on a blocking thread.

use std::io::Cursor;

pub use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use dicom_pixeldata::{
    ConvertOptions, PixelDecoder, Transcode, VoiLutFunction, VoiLutOption, WindowLevel,
};
use dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN;
use image::{DynamicImage, ImageEncoder, imageops::FilterType};

/// Explicit VR Little Endian, the transcoding target.
pub const EXPLICIT_VR_LITTLE_ENDIAN_UID: &str = "1.2.840.10008.1.2.1";

/// The stored transfer syntaxes Tessera transcodes from (the original's list, orig D.3).
pub const TRANSCODABLE: [&str; 9] = [
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.5",
];

/// Why pixel work could not be done.
#[derive(Debug, thiserror::Error)]
pub enum PixelError {
    /// The instance has no Pixel Data.
    #[error("the instance has no pixel data")]
    NoPixelData,
    /// The frame number is past the instance's frames (0-based here).
    #[error("frame {0} does not exist")]
    NoSuchFrame(u32),
    /// Tessera cannot decode or render this instance (syntax, photometric interpretation, …).
    #[error("cannot decode this instance: {0}")]
    Unsupported(String),
    /// Decoding would hold more than the limit.
    #[error("decoded pixel data of {needed} bytes exceeds Tessera:Limits:MaxDecodeBytes ({limit})")]
    TooLarge {
        /// Bytes the decoded pixel data would take.
        needed: u64,
        /// The limit.
        limit: u64,
    },
    /// The instance has no such bulk-data element.
    #[error("the instance has no bulk data element {0}")]
    NoSuchElement(String),
    /// A render parameter is out of range.
    #[error("{0}")]
    BadParameter(String),
}

/// Output format of a rendered image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    /// `image/jpeg` (the default).
    Jpeg,
    /// `image/png`.
    Png,
}

impl ImageFormat {
    /// The media type.
    pub fn media_type(self) -> &'static str {
        match self {
            Self::Jpeg => "image/jpeg",
            Self::Png => "image/png",
        }
    }
}

/// How to render a frame.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderOptions {
    /// JPEG or PNG.
    pub format: ImageFormat,
    /// JPEG quality, 1–100.
    pub quality: u8,
    /// Fit the image within this many columns × rows, keeping its aspect ratio.
    pub viewport: Option<(u32, u32)>,
    /// Window centre, width and function instead of the data set's VOI attributes.
    pub window: Option<Window>,
}

impl Default for RenderOptions {
    fn default() -> Self {
        Self {
            format: ImageFormat::Jpeg,
            quality: 100,
            viewport: None,
            window: None,
        }
    }
}

/// A window from the `window` parameter (PS3.18 §8.3.5.1.4).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window {
    /// Window centre.
    pub center: f64,
    /// Window width, more than 0.
    pub width: f64,
    /// `linear`, `linear-exact` or `sigmoid`.
    pub function: WindowFunction,
}

/// The VOI LUT function of a [`Window`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowFunction {
    /// LINEAR.
    Linear,
    /// LINEAR_EXACT.
    LinearExact,
    /// SIGMOID.
    Sigmoid,
}

impl Window {
    /// Parses `center,width[,function]`.
    pub fn parse(text: &str) -> Result<Self, PixelError> {
        let bad = || {
            PixelError::BadParameter(format!(
                "window must be center,width[,linear|linear-exact|sigmoid] with width > 0: '{}'",
                text.chars().take(100).collect::<String>()
            ))
        };
        let mut parts = text.split(',').map(str::trim);
        let center: f64 = parts.next().and_then(|c| c.parse().ok()).ok_or_else(bad)?;
        let width: f64 = parts.next().and_then(|w| w.parse().ok()).ok_or_else(bad)?;
        let function = match parts.next().map(str::to_ascii_lowercase).as_deref() {
            None | Some("linear") => WindowFunction::Linear,
            Some("linear-exact") => WindowFunction::LinearExact,
            Some("sigmoid") => WindowFunction::Sigmoid,
            Some(_) => return Err(bad()),
        };
        if parts.next().is_some() || !center.is_finite() || !(width.is_finite() && width > 0.0) {
            return Err(bad());
        }
        Ok(Self {
            center,
            width,
            function,
        })
    }
}

/// One stored instance, parsed into memory for decoding.
pub struct Instance {
    object: DefaultDicomObject,
    limit: u64,
}

fn unsupported(e: impl std::fmt::Display) -> PixelError {
    PixelError::Unsupported(e.to_string())
}

impl Instance {
    /// Parses Part-10 `bytes` (with their preamble), to decode at most `limit` bytes of pixels.
    pub fn parse(bytes: &[u8], limit: u64) -> Result<Self, PixelError> {
        let object = OpenFileOptions::new()
            .from_reader(Cursor::new(bytes.get(128..).unwrap_or_default()))
            .map_err(unsupported)?;
        Ok(Self { object, limit })
    }

    fn number(&self, tag: Tag) -> Option<u64> {
        let element = self.object.get(tag)?;
        element
            .to_int::<u64>()
            .ok()
            .or_else(|| element.to_str().ok()?.trim().parse().ok())
    }

    /// The number of frames (1 when NumberOfFrames is absent).
    pub fn frames(&self) -> u32 {
        self.number(tags::NUMBER_OF_FRAMES)
            .map_or(1, |n| u32::try_from(n.max(1)).unwrap_or(u32::MAX))
    }

    /// Bytes of one decoded frame, from the data set's attributes.
    fn frame_bytes(&self) -> Result<u64, PixelError> {
        if self.object.get(tags::PIXEL_DATA).is_none() {
            return Err(PixelError::NoPixelData);
        }
        let rows = self.number(tags::ROWS).unwrap_or(0);
        let columns = self.number(tags::COLUMNS).unwrap_or(0);
        let samples = self.number(tags::SAMPLES_PER_PIXEL).unwrap_or(1);
        let bits = self.number(tags::BITS_ALLOCATED).unwrap_or(8);
        rows.checked_mul(columns)
            .and_then(|n| n.checked_mul(samples))
            .and_then(|n| n.checked_mul(bits.div_ceil(8)))
            .ok_or_else(|| unsupported("image dimensions overflow"))
    }

    /// Checks that decoding `frames` frames stays under the limit (the decoder may hold the
    /// encoded and decoded forms at once, and rendering adds an 8- or 16-bit image).
    fn check_decoded(&self, frames: u64) -> Result<(), PixelError> {
        let needed = self.frame_bytes()?.saturating_mul(frames);
        if needed > self.limit {
            return Err(PixelError::TooLarge {
                needed,
                limit: self.limit,
            });
        }
        Ok(())
    }

    /// Renders `frame` (0-based) as JPEG or PNG.
    pub fn render(&self, frame: u32, options: &RenderOptions) -> Result<Vec<u8>, PixelError> {
        if frame >= self.frames() {
            return Err(PixelError::NoSuchFrame(frame));
        }
        if !(1..=100).contains(&options.quality) {
            return Err(PixelError::BadParameter("quality must be 1 to 100".into()));
        }
        self.check_decoded(1)?;
        let decoded = self
            .object
            .decode_pixel_data_frame(frame)
            .map_err(unsupported)?;
        let voi = match options.window {
            None => VoiLutOption::Default,
            Some(w) => VoiLutOption::CustomWithFunction(
                WindowLevel {
                    center: w.center,
                    width: w.width,
                },
                match w.function {
                    WindowFunction::Linear => VoiLutFunction::Linear,
                    WindowFunction::LinearExact => VoiLutFunction::LinearExact,
                    WindowFunction::Sigmoid => VoiLutFunction::Sigmoid,
                },
            ),
        };
        let convert = ConvertOptions::new().with_voi_lut(voi).force_8bit();
        let mut image = decoded
            .to_dynamic_image_with_options(0, &convert)
            .map_err(unsupported)?;
        drop(decoded);
        if let Some((columns, rows)) = options.viewport {
            if columns == 0 || rows == 0 {
                return Err(PixelError::BadParameter(
                    "viewport dimensions must be more than 0".into(),
                ));
            }
            let needed = u64::from(columns) * u64::from(rows) * 4;
            if needed > self.limit {
                return Err(PixelError::TooLarge {
                    needed,
                    limit: self.limit,
                });
            }
            image = image.resize(columns, rows, FilterType::Triangle);
        }
        encode(image, options)
    }

    /// The whole instance as Part-10 bytes in Explicit VR Little Endian.
    pub fn to_explicit_vr_little_endian(mut self) -> Result<Vec<u8>, PixelError> {
        self.check_transcodable()?;
        if self.object.get(tags::PIXEL_DATA).is_some() {
            self.check_decoded(u64::from(self.frames()))?;
        }
        self.object
            .transcode(&EXPLICIT_VR_LITTLE_ENDIAN.erased())
            .map_err(unsupported)?;
        // `write_all` writes the 128-byte preamble and `DICM` itself.
        let mut out = Vec::new();
        self.object.write_all(&mut out).map_err(unsupported)?;
        Ok(out)
    }

    /// Frame `frame` (0-based) decoded to native little-endian samples, as a frames request in
    /// Explicit VR Little Endian returns it.
    pub fn native_frame(&self, frame: u32) -> Result<Vec<u8>, PixelError> {
        self.check_transcodable()?;
        if frame >= self.frames() {
            return Err(PixelError::NoSuchFrame(frame));
        }
        self.check_decoded(1)?;
        let decoded = self
            .object
            .decode_pixel_data_frame(frame)
            .map_err(unsupported)?;
        Ok(decoded.into_data())
    }

    /// The value of the top-level bulk-data element `tag` (VR OB, OD, OF, OL, OV, OW or UN), as
    /// its BulkDataURI serves it (PS3.18 §8.4.1.2: native little-endian bytes).
    pub fn bulk_data(&self, tag: Tag) -> Result<Vec<u8>, PixelError> {
        use dicom_core::VR;
        let missing =
            || PixelError::NoSuchElement(format!("({:04X},{:04X})", tag.group(), tag.element()));
        let element = self.object.get(tag).ok_or_else(missing)?;
        if !matches!(
            element.vr(),
            VR::OB | VR::OD | VR::OF | VR::OL | VR::OV | VR::OW | VR::UN
        ) {
            return Err(missing());
        }
        element
            .to_bytes()
            .map(|b| b.into_owned())
            .map_err(|_| unsupported("encapsulated pixel data is served by the frames resource"))
    }

    fn check_transcodable(&self) -> Result<(), PixelError> {
        let syntax = self.object.meta().transfer_syntax();
        if TRANSCODABLE.contains(&syntax) {
            Ok(())
        } else {
            Err(PixelError::Unsupported(format!(
                "Tessera does not transcode from transfer syntax {syntax}"
            )))
        }
    }
}

fn encode(image: DynamicImage, options: &RenderOptions) -> Result<Vec<u8>, PixelError> {
    let mut out = Vec::new();
    match options.format {
        ImageFormat::Jpeg => {
            // JPEG has no alpha and no 16-bit samples.
            let image = match image {
                DynamicImage::ImageLuma8(_) | DynamicImage::ImageRgb8(_) => image,
                DynamicImage::ImageLuma16(_) | DynamicImage::ImageLumaA8(_) => {
                    DynamicImage::ImageLuma8(image.to_luma8())
                }
                _ => DynamicImage::ImageRgb8(image.to_rgb8()),
            };
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, options.quality)
                .encode_image(&image)
                .map_err(unsupported)?;
        }
        ImageFormat::Png => {
            image::codecs::png::PngEncoder::new(&mut out)
                .write_image(
                    image.as_bytes(),
                    image.width(),
                    image.height(),
                    image.color().into(),
                )
                .map_err(unsupported)?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_parameter() {
        let w = Window::parse("40,400").unwrap();
        assert_eq!(
            (w.center, w.width, w.function),
            (40.0, 400.0, WindowFunction::Linear)
        );
        assert_eq!(
            Window::parse("-600, 1500, SIGMOID").unwrap().function,
            WindowFunction::Sigmoid
        );
        for bad in [
            "",
            "1",
            "1,0",
            "1,-2",
            "a,b",
            "1,2,cubic",
            "1,2,linear,4",
            "NaN,3",
        ] {
            assert!(Window::parse(bad).is_err(), "{bad}");
        }
    }
}
