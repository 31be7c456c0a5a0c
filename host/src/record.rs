//! Record batches. The host keeps records in the same columnar layout the plugin interface uses
//! (records pointing into one byte buffer), so a batch goes to a plugin without conversion and
//! comes back as a few buffers to split by output.

pub use crate::plugin::bindings::{Batch, Header, InputRecord, OutputBatch, RecordError, Span};

/// Header names the host sets on dead letters.
pub mod dlq_headers {
    /// Why the record failed.
    pub const ERROR: &str = "weir.error";
    /// The stage (or sink) where it failed.
    pub const STAGE: &str = "weir.stage";
    /// Hex sha256 of the plugin that failed it (absent for sinks).
    pub const PLUGIN: &str = "weir.plugin.sha256";
    /// Source topic (or file) of the record.
    pub const TOPIC: &str = "weir.source.topic";
    /// Source partition.
    pub const PARTITION: &str = "weir.source.partition";
    /// Source offset (or line number).
    pub const OFFSET: &str = "weir.source.offset";
    /// Event time of the record, ms since the Unix epoch.
    pub const TIMESTAMP: &str = "weir.source.timestamp";
}

/// A batch on its way to a sink, with the plugin that emitted it.
#[derive(Clone, Copy)]
pub struct Routed<'a> {
    /// The records.
    pub batch: &'a Batch,
    /// Hex sha256 of the plugin whose stage emitted them: `None` for the source's records and
    /// for dead letters.
    pub plugin: Option<&'a str>,
}

impl<'a> From<&'a Batch> for Routed<'a> {
    fn from(batch: &'a Batch) -> Routed<'a> {
        Routed {
            batch,
            plugin: None,
        }
    }
}

fn slice(data: &[u8], span: Span) -> &[u8] {
    &data[span.start as usize..(span.start + span.len) as usize]
}

impl Batch {
    /// An empty batch from `topic`/`partition`, with room for `records` records.
    pub fn with_capacity(topic: &str, partition: i32, records: usize, bytes: usize) -> Batch {
        Batch {
            topic: topic.to_string(),
            partition,
            processing_time_ms: 0,
            records: Vec::with_capacity(records),
            data: Vec::with_capacity(bytes),
            headers: Vec::new(),
        }
    }

    /// Drops every record, keeping the buffers.
    pub fn clear(&mut self) {
        self.records.clear();
        self.data.clear();
        self.headers.clear();
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the batch has no records.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The value of record `i`.
    pub fn value(&self, i: usize) -> &[u8] {
        slice(&self.data, self.records[i].value)
    }

    /// The key of record `i`.
    pub fn key(&self, i: usize) -> Option<&[u8]> {
        self.records[i].key.map(|k| slice(&self.data, k))
    }

    /// The headers of record `i`.
    pub fn headers_of(&self, i: usize) -> &[Header] {
        let span = self.records[i].headers;
        &self.headers[span.start as usize..(span.start + span.len) as usize]
    }

    /// Appends a record whose value `write` puts straight into the data buffer.
    pub fn push_with(
        &mut self,
        key: Option<&[u8]>,
        timestamp_ms: i64,
        offset: i64,
        headers: &[Header],
        write: impl FnOnce(&mut Vec<u8>),
    ) {
        let key = key.map(|key| self.append_bytes(key));
        let start = self.data.len() as u32;
        write(&mut self.data);
        let value = Span {
            start,
            len: self.data.len() as u32 - start,
        };
        let first = self.headers.len() as u32;
        self.headers.extend_from_slice(headers);
        let headers = Span {
            start: first,
            len: headers.len() as u32,
        };
        self.records.push(InputRecord {
            key,
            value,
            timestamp_ms,
            offset,
            headers,
        });
    }

    /// Appends a record.
    pub fn push(
        &mut self,
        key: Option<&[u8]>,
        value: &[u8],
        timestamp_ms: i64,
        offset: i64,
        headers: &[Header],
    ) {
        self.push_with(key, timestamp_ms, offset, headers, |buf| {
            buf.extend_from_slice(value)
        });
    }

    /// Appends record `i` of `other`, with `extra` headers after its own.
    pub fn push_from(&mut self, other: &Batch, i: usize, extra: &[Header]) {
        let record = other.records[i];
        let mut headers = other.headers_of(i).to_vec();
        headers.extend_from_slice(extra);
        self.push(
            other.key(i),
            other.value(i),
            record.timestamp_ms,
            record.offset,
            &headers,
        );
    }

    fn append_bytes(&mut self, bytes: &[u8]) -> Span {
        let start = self.data.len() as u32;
        self.data.extend_from_slice(bytes);
        Span {
            start,
            len: bytes.len() as u32,
        }
    }

    /// Copies the records that failed, with headers saying where and why, for the dead-letter
    /// output.
    pub fn dead_letters(&self, errors: &[RecordError], stage: &str, plugin: Option<&str>) -> Batch {
        let mut out = Batch::with_capacity(&self.topic, self.partition, errors.len(), 0);
        out.processing_time_ms = self.processing_time_ms;
        for error in errors {
            let i = error.index as usize;
            let Some(record) = self.records.get(i) else {
                continue;
            };
            let mut extra = vec![
                header(dlq_headers::ERROR, error.message.as_bytes()),
                header(dlq_headers::STAGE, stage.as_bytes()),
                header(dlq_headers::TOPIC, self.topic.as_bytes()),
                header(
                    dlq_headers::PARTITION,
                    self.partition.to_string().as_bytes(),
                ),
                header(dlq_headers::OFFSET, record.offset.to_string().as_bytes()),
                header(
                    dlq_headers::TIMESTAMP,
                    record.timestamp_ms.to_string().as_bytes(),
                ),
            ];
            if let Some(plugin) = plugin {
                extra.insert(2, header(dlq_headers::PLUGIN, plugin.as_bytes()));
            }
            out.push_from(self, i, &extra);
        }
        out
    }
}

/// A header from a name and bytes.
pub fn header(name: &str, value: &[u8]) -> Header {
    Header {
        name: name.to_string(),
        value: value.to_vec(),
    }
}

/// Splits what a stage produced into one batch per output (index 0 is the default output),
/// as input batches for what reads them. Output records that derive from an input record keep
/// its source offset; others get offset -1.
pub fn split_outputs(out: OutputBatch, input: &Batch, outputs: usize) -> Vec<Batch> {
    let mut batches: Vec<Batch> = (0..=outputs)
        .map(|_| Batch {
            topic: input.topic.clone(),
            partition: input.partition,
            processing_time_ms: input.processing_time_ms,
            records: Vec::new(),
            data: Vec::new(),
            headers: Vec::new(),
        })
        .collect();
    let offset_of = |derived: Option<u32>| {
        derived
            .and_then(|i| input.records.get(i as usize))
            .map_or(-1, |r| r.offset)
    };
    let single = out.records.iter().all(|r| r.output == 0);
    if single {
        // The common case: everything goes to the default output, so the buffers move as they are.
        let target = &mut batches[0];
        target.records = out
            .records
            .iter()
            .map(|r| InputRecord {
                key: r.key,
                value: r.value,
                timestamp_ms: r.timestamp_ms,
                offset: offset_of(r.derived_from),
                headers: r.headers,
            })
            .collect();
        target.data = out.data;
        target.headers = out.headers;
        return batches;
    }
    for r in &out.records {
        let Some(target) = batches.get_mut(r.output as usize) else {
            continue; // validated against the stage's outputs below, in the runtime
        };
        let headers =
            &out.headers[r.headers.start as usize..(r.headers.start + r.headers.len) as usize];
        target.push(
            r.key.map(|k| slice(&out.data, k)),
            slice(&out.data, r.value),
            r.timestamp_ms,
            offset_of(r.derived_from),
            headers,
        );
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::bindings::OutputRecord;

    fn input() -> Batch {
        let mut b = Batch::with_capacity("t", 2, 2, 0);
        b.push(Some(b"k0"), b"v0", 10, 100, &[]);
        b.push(None, b"v1", 11, 101, &[header("h", b"x")]);
        b
    }

    #[test]
    fn dead_letters_keep_the_record_and_say_why() {
        let b = input();
        let dl = b.dead_letters(
            &[RecordError {
                index: 1,
                message: "bad".into(),
            }],
            "enrich",
            Some("abc"),
        );
        assert_eq!(dl.len(), 1);
        assert_eq!(dl.value(0), b"v1");
        assert_eq!(dl.key(0), None);
        let h: Vec<(&str, &[u8])> = dl
            .headers_of(0)
            .iter()
            .map(|h| (h.name.as_str(), &h.value[..]))
            .collect();
        assert_eq!(h[0], ("h", &b"x"[..]));
        assert!(h.contains(&(dlq_headers::ERROR, &b"bad"[..])));
        assert!(h.contains(&(dlq_headers::PLUGIN, &b"abc"[..])));
        assert!(h.contains(&(dlq_headers::OFFSET, &b"101"[..])));
        assert!(h.contains(&(dlq_headers::PARTITION, &b"2"[..])));
    }

    #[test]
    fn outputs_split_and_keep_offsets() {
        let b = input();
        let rec = |output, derived_from, start, len| OutputRecord {
            output,
            derived_from,
            key: None,
            value: Span { start, len },
            timestamp_ms: 5,
            headers: Span { start: 0, len: 0 },
        };
        let out = OutputBatch {
            records: vec![
                rec(0, Some(1), 0, 1),
                rec(1, Some(0), 1, 2),
                rec(0, None, 3, 1),
            ],
            data: b"abcd".to_vec(),
            headers: vec![],
            errors: vec![],
        };
        let split = split_outputs(out, &b, 1);
        assert_eq!(split[0].len(), 2);
        assert_eq!(split[0].value(0), b"a");
        assert_eq!(split[0].records[0].offset, 101);
        assert_eq!(split[0].value(1), b"d");
        assert_eq!(split[0].records[1].offset, -1);
        assert_eq!(split[1].value(0), b"bc");
        assert_eq!(split[1].records[0].offset, 100);
    }
}
