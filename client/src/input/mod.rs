//! Reading profile files into the pprof bytes a write carries.
//!
//! Three formats are understood:
//! - **pprof** (`.pb`, `.pb.gz`, `.pprof`, `.prof`, or anything gzipped that is not named as another
//!   format): validated by decoding, then sent as the file's own bytes, never re-encoded;
//! - **folded stacks** (`.folded`, `.collapsed`, or text whose first line looks like `a;b;c 12`):
//!   converted by [`folded::folded_to_pprof`];
//! - **speedscope JSON** (`.json`, `.speedscope`, or text that starts with `{`): converted by
//!   [`speedscope::speedscope_to_pprof`].
//!
//! Folded and speedscope files may themselves be gzipped (`x.folded.gz`). Converted profiles are encoded
//! with prost and gzipped with flate2.

mod builder;
pub mod folded;
pub mod speedscope;

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use kiln_proto::pprof::Profile;
use prost::Message;

/// The most bytes a gzipped input may expand to; more is refused rather than exhausting memory.
pub const MAX_DECOMPRESSED_BYTES: u64 = 1 << 30;

/// Why an input file could not be read or converted. Errors about a file's content are wrapped in
/// [`InputError::InFile`] by [`load_profile_file`], so the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The file could not be read.
    #[error("cannot read {path}", path = path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// A directory could not be listed.
    #[error("cannot list directory {path}", path = path.display())]
    ListDirectory {
        /// The directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// A problem with the content of one file.
    #[error("{path}", path = path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with its content.
        #[source]
        source: Box<InputError>,
    },

    /// A line of a folded file is malformed.
    #[error("line {line_number}: {reason}")]
    FoldedLine {
        /// 1-based line number.
        line_number: usize,
        /// What is wrong with it.
        reason: String,
    },

    /// The file holds no profile data at all.
    #[error("{0}")]
    Empty(String),

    /// The file is not JSON of the speedscope shape.
    #[error("not a speedscope JSON file")]
    SpeedscopeJson(#[source] serde_json::Error),

    /// The speedscope JSON is well-formed but inconsistent.
    #[error("invalid speedscope profile: {0}")]
    Speedscope(String),

    /// The gzip stream is truncated or corrupt.
    #[error("invalid gzip data")]
    Gzip(#[source] std::io::Error),

    /// The gzip stream expands past [`MAX_DECOMPRESSED_BYTES`].
    #[error("decompresses to more than {MAX_DECOMPRESSED_BYTES} bytes")]
    TooLarge,

    /// The bytes are not a pprof protobuf.
    #[error("not a valid pprof profile")]
    PprofDecode(#[source] prost::DecodeError),

    /// The pprof decodes but refers to things that do not exist.
    #[error("invalid pprof profile: {0}")]
    InvalidPprof(String),

    /// The text is not UTF-8.
    #[error("not UTF-8 text")]
    NotUtf8(#[source] std::str::Utf8Error),

    /// Gzip-encoding a converted profile failed.
    #[error("cannot gzip the converted profile")]
    Encode(#[source] std::io::Error),
}

/// The formats [`load_profile_file`] understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InputFormat {
    /// A pprof protobuf, gzipped or not.
    Pprof,
    /// Folded stacks text.
    Folded,
    /// Speedscope JSON.
    Speedscope,
}

impl fmt::Display for InputFormat {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            InputFormat::Pprof => "pprof",
            InputFormat::Folded => "folded",
            InputFormat::Speedscope => "speedscope",
        })
    }
}

/// A profile file ready to be written.
#[derive(Debug, Clone)]
pub struct LoadedProfile {
    /// Where it was read from.
    pub path: PathBuf,
    /// The format it was in.
    pub format: InputFormat,
    /// The pprof bytes to send: the file's own bytes for pprof input, a gzipped pprof for converted input.
    pub pprof: Vec<u8>,
    /// How many samples the pprof holds (a local count, for progress reports).
    pub sample_count: usize,
}

/// True when `bytes` start with the gzip magic number `1f 8b`.
pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b])
}

/// The format a file name announces, ignoring a trailing `.gz`; `None` for names that say nothing.
pub fn format_from_file_name(path: &Path) -> Option<InputFormat> {
    let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    let has_extension = |extensions: &[&str]| extensions.iter().any(|extension| name.ends_with(extension));
    if has_extension(&[".pb", ".pprof", ".prof", ".pb.bin"]) {
        return Some(InputFormat::Pprof);
    }
    if has_extension(&[".folded", ".collapsed", ".folded.txt", ".collapsed.txt"]) {
        return Some(InputFormat::Folded);
    }
    if has_extension(&[".json", ".speedscope"]) {
        return Some(InputFormat::Speedscope);
    }
    None
}

/// Decides the format of a file from its name and its first bytes (`content`, possibly gzipped):
/// a gzipped file is pprof unless its name says folded or speedscope; an uncompressed file is what its
/// name says; otherwise JSON-looking text is speedscope, folded-looking text is folded, and anything else
/// is taken for an uncompressed pprof.
pub fn detect_format(path: &Path, content: &[u8]) -> InputFormat {
    let by_name = format_from_file_name(path);
    if is_gzip(content) {
        return match by_name {
            Some(InputFormat::Folded) => InputFormat::Folded,
            Some(InputFormat::Speedscope) => InputFormat::Speedscope,
            _ => InputFormat::Pprof,
        };
    }
    if let Some(format) = by_name {
        return format;
    }
    let first_text_byte = content.iter().find(|byte| !byte.is_ascii_whitespace());
    if first_text_byte == Some(&b'{') {
        return InputFormat::Speedscope;
    }
    if looks_like_folded(content) {
        return InputFormat::Folded;
    }
    InputFormat::Pprof
}

fn looks_like_folded(content: &[u8]) -> bool {
    let head = &content[..content.len().min(64 * 1024)];
    // A cut in the middle of a UTF-8 sequence at the end of `head` is fine: only the first line matters.
    let text = match std::str::from_utf8(head) {
        Ok(text) => text,
        Err(error) => match std::str::from_utf8(&head[..error.valid_up_to()]) {
            Ok(text) => text,
            Err(_) => return false,
        },
    };
    let Some(first_line) = text
        .lines()
        .map(str::trim_end)
        .find(|line| !line.trim().is_empty())
    else {
        return false;
    };
    if first_line
        .chars()
        .any(|character| character.is_control() && character != '\t')
    {
        return false;
    }
    match first_line.rsplit_once(' ') {
        Some((stack, count)) => !stack.trim().is_empty() && count.bytes().all(|byte| byte.is_ascii_digit()),
        None => false,
    }
}

/// Gunzips `bytes`, refusing to expand past [`MAX_DECOMPRESSED_BYTES`]; concatenated gzip members are
/// read as one stream.
pub fn gunzip(bytes: &[u8]) -> Result<Vec<u8>, InputError> {
    let mut decoder = flate2::read::MultiGzDecoder::new(bytes).take(MAX_DECOMPRESSED_BYTES + 1);
    let mut decompressed = Vec::new();
    decoder.read_to_end(&mut decompressed).map_err(InputError::Gzip)?;
    if decompressed.len() as u64 > MAX_DECOMPRESSED_BYTES {
        return Err(InputError::TooLarge);
    }
    Ok(decompressed)
}

/// Decodes pprof bytes, gunzipping them first when they start with the gzip magic.
pub fn decode_pprof(bytes: &[u8]) -> Result<Profile, InputError> {
    if is_gzip(bytes) {
        let decompressed = gunzip(bytes)?;
        return Profile::decode(decompressed.as_slice()).map_err(InputError::PprofDecode);
    }
    Profile::decode(bytes).map_err(InputError::PprofDecode)
}

/// Encodes a profile with prost and gzips it (default compression level).
pub fn encode_pprof_gzip(profile: &Profile) -> Result<Vec<u8>, InputError> {
    let encoded = profile.encode_to_vec();
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(&encoded).map_err(InputError::Encode)?;
    encoder.finish().map_err(InputError::Encode)
}

fn text_of(bytes: &[u8]) -> Result<&str, InputError> {
    std::str::from_utf8(bytes).map_err(InputError::NotUtf8)
}

/// Converts the content of one file (named `path`, used only for format detection) into pprof bytes.
/// pprof content is validated by decoding and then passed through unchanged. Errors are not wrapped with
/// the path; [`load_profile_file`] does that.
pub fn convert_profile_bytes(path: &Path, content: Vec<u8>) -> Result<LoadedProfile, InputError> {
    let format = detect_format(path, &content);
    let (pprof, sample_count) = match format {
        InputFormat::Pprof => {
            let profile = decode_pprof(&content)?;
            let sample_count = profile.sample.len();
            (content, sample_count)
        }
        InputFormat::Folded | InputFormat::Speedscope => {
            let decompressed;
            let raw: &[u8] = if is_gzip(&content) {
                decompressed = gunzip(&content)?;
                &decompressed
            } else {
                &content
            };
            let text = text_of(raw)?;
            let profile = if format == InputFormat::Folded {
                folded::folded_to_pprof(text)?
            } else {
                speedscope::speedscope_to_pprof(text)?
            };
            (encode_pprof_gzip(&profile)?, profile.sample.len())
        }
    };
    Ok(LoadedProfile {
        path: path.to_path_buf(),
        format,
        pprof,
        sample_count,
    })
}

/// Reads and converts one file; every error names the file.
pub fn load_profile_file(path: &Path) -> Result<LoadedProfile, InputError> {
    let content = std::fs::read(path).map_err(|source| InputError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    convert_profile_bytes(path, content).map_err(|source| InputError::InFile {
        path: path.to_path_buf(),
        source: Box::new(source),
    })
}

/// Expands the paths given on a command line into the files to ingest, in order: a file is kept as
/// given (whatever its name); a directory contributes, recursively and in sorted order, every file whose
/// name announces a profile format (see [`format_from_file_name`]), skipping hidden entries.
pub fn expand_input_paths(paths: &[PathBuf]) -> Result<Vec<PathBuf>, InputError> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            collect_directory(path, &mut files)?;
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

fn collect_directory(directory: &Path, files: &mut Vec<PathBuf>) -> Result<(), InputError> {
    let list_error = |source| InputError::ListDirectory {
        path: directory.to_path_buf(),
        source,
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(directory)
        .map_err(list_error)?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<Result<_, _>>()
        .map_err(list_error)?;
    entries.sort();
    for entry in entries {
        let hidden = entry
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with('.'));
        if hidden {
            continue;
        }
        if entry.is_dir() {
            collect_directory(&entry, files)?;
        } else if format_from_file_name(&entry).is_some() {
            files.push(entry);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn testdata(relative: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/testdata")
            .join(relative)
    }

    #[test]
    fn formats_are_detected_by_name_and_content() {
        let gzip = [0x1f, 0x8b, 0x08, 0x00];
        assert_eq!(detect_format(Path::new("cpu.pb.gz"), &gzip), InputFormat::Pprof);
        assert_eq!(detect_format(Path::new("cpu"), &gzip), InputFormat::Pprof);
        assert_eq!(
            detect_format(Path::new("x.folded.gz"), &gzip),
            InputFormat::Folded
        );
        assert_eq!(
            detect_format(Path::new("x.speedscope.json.gz"), &gzip),
            InputFormat::Speedscope
        );
        assert_eq!(
            detect_format(Path::new("cpu.pb"), b"\x0a\x02"),
            InputFormat::Pprof
        );
        assert_eq!(
            detect_format(Path::new("stacks.FOLDED"), b"a;b 1\n"),
            InputFormat::Folded
        );
        assert_eq!(detect_format(Path::new("p.json"), b"{}"), InputFormat::Speedscope);
        assert_eq!(
            detect_format(Path::new("out.txt"), b"main;do work 12\n"),
            InputFormat::Folded
        );
        assert_eq!(
            detect_format(Path::new("profile"), b"  \n{\"$schema\": 1}"),
            InputFormat::Speedscope
        );
        assert_eq!(
            detect_format(Path::new("profile"), b"\x0a\x04\x08\x01\x10\x02"),
            InputFormat::Pprof
        );
        assert_eq!(
            detect_format(Path::new("notes.txt"), b"hello world\n"),
            InputFormat::Pprof
        );
    }

    #[test]
    fn pprof_files_are_sent_byte_for_byte() {
        let path = testdata("pprof/go/cpu.pb.gz");
        let original = std::fs::read(&path).unwrap();
        let loaded = load_profile_file(&path).unwrap();
        assert_eq!(loaded.format, InputFormat::Pprof);
        assert_eq!(loaded.pprof, original);
        assert!(loaded.sample_count > 0);
    }

    #[test]
    fn converted_files_become_gzipped_pprof() {
        for (relative, format) in [
            ("folded/python-pyspy.folded", InputFormat::Folded),
            ("speedscope/python-pyspy.speedscope.json", InputFormat::Speedscope),
        ] {
            let loaded = load_profile_file(&testdata(relative)).unwrap();
            assert_eq!(loaded.format, format);
            assert!(is_gzip(&loaded.pprof));
            let profile = decode_pprof(&loaded.pprof).unwrap();
            assert_eq!(profile.sample.len(), loaded.sample_count);
        }
    }

    #[test]
    fn gzipped_folded_input_is_converted() {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(b"main;work 5\n").unwrap();
        let gzipped = encoder.finish().unwrap();
        let loaded = convert_profile_bytes(Path::new("x.folded.gz"), gzipped).unwrap();
        let profile = decode_pprof(&loaded.pprof).unwrap();
        assert_eq!(
            folded::pprof_to_folded_lines(&profile, 0).unwrap(),
            vec!["main;work 5"]
        );
    }

    #[test]
    fn bad_content_gives_errors_that_name_the_file() {
        let directory = tempfile::tempdir().unwrap();
        let cases: [(&str, &[u8]); 4] = [
            ("truncated.pb.gz", &[0x1f, 0x8b, 0x08, 0x00, 0x00]),
            ("garbage.pb", b"\xff\xff\xff\xff\xff\xff"),
            ("bad.folded", b"a;b notanumber\n"),
            ("bad.json", b"{\"profiles\": []}"),
        ];
        for (name, content) in cases {
            let path = directory.path().join(name);
            std::fs::write(&path, content).unwrap();
            let error = load_profile_file(&path).unwrap_err();
            assert!(matches!(error, InputError::InFile { .. }), "{name}: {error:?}");
            assert!(error.to_string().contains(name), "{error}");
        }
        let missing = load_profile_file(&directory.path().join("missing.pb")).unwrap_err();
        assert!(matches!(missing, InputError::Read { .. }));
    }

    #[test]
    fn directories_expand_to_profile_files_only() {
        let files = expand_input_paths(&[testdata("pprof/go")]).unwrap();
        assert!(files.len() >= 10, "{files:?}");
        assert!(
            files
                .iter()
                .all(|file| file.to_string_lossy().ends_with(".pb.gz")),
            "{files:?}"
        );
        let mut sorted = files.clone();
        sorted.sort();
        assert_eq!(files, sorted);
    }
}
