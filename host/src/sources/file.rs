//! The `file` source: each non-empty line of a file is one record's value (JSON lines, usually).
//! The topic is the file's name, the offset is the line number (from 1), so a dead letter
//! points at its line; the event time is when the line was read.

use std::path::Path;

use std::io::{BufRead, BufReader};

use super::SourceError;
use crate::{plugin::now_ms, record::Batch};

/// A file being read.
pub struct FileSource {
    /// The file, for messages.
    path: String,
    /// The file's name, as the records' topic.
    topic: String,
    /// Buffered reader over the file.
    reader: BufReader<std::fs::File>,
    /// Records per batch.
    batch_size: usize,
    /// Number of the last line read.
    line: i64,
    /// Reused line buffer.
    buf: Vec<u8>,
}

impl FileSource {
    /// Opens `path` for reading, past its first `skip` lines (read by a previous run).
    pub fn open(path: &Path, batch_size: usize, skip: u64) -> Result<FileSource, SourceError> {
        let io = |source| SourceError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let mut source = FileSource {
            path: path.display().to_string(),
            topic: path
                .file_name()
                .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned()),
            reader: BufReader::with_capacity(1 << 20, file),
            batch_size,
            line: 0,
            buf: Vec::new(),
        };
        while (source.line as u64) < skip {
            source.buf.clear();
            if source
                .reader
                .read_until(b'\n', &mut source.buf)
                .map_err(io)?
                == 0
            {
                break;
            }
            source.line += 1;
        }
        Ok(source)
    }

    /// Lines read so far (blank ones included): the next line's offset, less one.
    pub fn lines_read(&self) -> u64 {
        self.line as u64
    }

    /// The next batch of lines, or `None` at the end of the file.
    pub fn next_batch(&mut self) -> Result<Option<Batch>, SourceError> {
        let mut batch =
            Batch::with_capacity(&self.topic, 0, self.batch_size, self.batch_size * 256);
        let now = now_ms();
        while batch.len() < self.batch_size {
            self.buf.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut self.buf)
                .map_err(|source| SourceError::Io {
                    path: self.path.clone(),
                    source,
                })?;
            if n == 0 {
                break;
            }
            self.line += 1;
            let mut line = &self.buf[..];
            while let [rest @ .., b'\n' | b'\r'] = line {
                line = rest;
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            batch.push(None, line, now, self.line, &[]);
        }
        Ok((!batch.is_empty()).then_some(batch))
    }
}
