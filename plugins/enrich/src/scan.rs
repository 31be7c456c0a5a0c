//! A validating scan of one JSON object in a single pass, building nothing.
//!
//! `enrich` only needs to know that a value is exactly one well-formed JSON object (RFC 8259)
//! and whether its top level already has one of the fields it adds. A general parser spends
//! most of its time on what this does not need: converting numbers, checking UTF-8 key by key,
//! calling visitors. Here UTF-8 is checked once for the whole value, strings are skipped with a
//! byte table, numbers are checked against the grammar without being converted, and only
//! top-level keys are compared. Nesting is limited to 128 levels, as in `serde_json`.

use std::ops::Range;

/// What the scan learnt about the object.
#[derive(Debug, PartialEq, Eq)]
pub struct Shape {
    /// `{}` (with any whitespace inside).
    pub is_empty: bool,
    /// The top level has a key equal to one of the reserved names.
    pub has_reserved_key: bool,
}

/// How deep arrays and objects may nest.
const MAX_DEPTH: u32 = 128;

/// Bytes that end the fast part of a string scan: `"`, `\` and control characters.
static STRING_STOP: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

struct Scanner<'a> {
    bytes: &'a [u8],
    pos: usize,
}

type Result<T> = std::result::Result<T, String>;

impl<'a> Scanner<'a> {
    fn error<T>(&self, what: &str) -> Result<T> {
        Err(format!("{what} at byte {}", self.pos))
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn expect(&mut self, byte: u8, what: &str) -> Result<()> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            self.error(what)
        }
    }

    /// Skips a string whose opening quote is at `pos`; returns its raw contents (escapes kept).
    fn string(&mut self) -> Result<&'a [u8]> {
        self.pos += 1;
        let start = self.pos;
        loop {
            let Some(&b) = self.bytes.get(self.pos) else {
                return self.error("unterminated string");
            };
            if !STRING_STOP[b as usize] {
                self.pos += 1;
                continue;
            }
            match b {
                b'"' => {
                    let raw = &self.bytes[start..self.pos];
                    self.pos += 1;
                    return Ok(raw);
                }
                b'\\' => {
                    self.pos += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                            self.pos += 1
                        }
                        Some(b'u') => {
                            self.pos += 1;
                            let unit = self.hex4()?;
                            if (0xDC00..0xE000).contains(&unit) {
                                return self.error("lone trailing surrogate in \\u escape");
                            }
                            if (0xD800..0xDC00).contains(&unit) {
                                let low = match self.bytes.get(self.pos..self.pos + 2) {
                                    Some(b"\\u") => {
                                        self.pos += 2;
                                        self.hex4()?
                                    }
                                    _ => 0,
                                };
                                if !(0xDC00..0xE000).contains(&low) {
                                    return self.error("lone leading surrogate in \\u escape");
                                }
                            }
                        }
                        _ => return self.error("invalid escape"),
                    }
                }
                _ => return self.error("control character in string"),
            }
        }
    }

    /// Reads the four hex digits of a `\\u` escape as one UTF-16 code unit.
    fn hex4(&mut self) -> Result<u16> {
        let mut unit = 0u16;
        for _ in 0..4 {
            let digit = match self.peek() {
                Some(h @ b'0'..=b'9') => h - b'0',
                Some(h @ b'a'..=b'f') => h - b'a' + 10,
                Some(h @ b'A'..=b'F') => h - b'A' + 10,
                _ => return self.error("invalid \\u escape"),
            };
            unit = unit << 4 | u16::from(digit);
            self.pos += 1;
        }
        Ok(unit)
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<()> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return self.error("invalid number"),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return self.error("invalid number");
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return self.error("invalid number");
            }
        }
        Ok(())
    }

    fn literal(&mut self, word: &[u8]) -> Result<()> {
        if self.bytes[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            self.error("invalid literal")
        }
    }

    fn value(&mut self, depth: u32) -> Result<()> {
        match self.peek() {
            Some(b'"') => self.string().map(|_| ()),
            Some(b'{') => self.object(depth + 1, |_, _| ()).map(|_| ()),
            Some(b'[') => self.array(depth + 1),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => self.error("expected a value"),
            None => self.error("unexpected end"),
        }
    }

    fn array(&mut self, depth: u32) -> Result<()> {
        if depth > MAX_DEPTH {
            return self.error("nested too deeply");
        }
        self.pos += 1;
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.skip_ws();
            self.value(depth)?;
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return self.error("expected `,` or `]`"),
            }
        }
    }

    /// Scans an object whose `{` is at `pos`, calling `on_member` with each raw key and the
    /// byte range of its member (from the key's opening quote to the end of its value);
    /// returns the number of members.
    fn object(
        &mut self,
        depth: u32,
        mut on_member: impl FnMut(&[u8], Range<usize>),
    ) -> Result<usize> {
        if depth > MAX_DEPTH {
            return self.error("nested too deeply");
        }
        self.pos += 1;
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(0);
        }
        let mut members = 0;
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return self.error("expected a key");
            }
            let start = self.pos;
            let key = self.string()?;
            self.skip_ws();
            self.expect(b':', "expected `:`")?;
            self.skip_ws();
            self.value(depth)?;
            on_member(key, start..self.pos);
            members += 1;
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(members);
                }
                _ => return self.error("expected `,` or `}`"),
            }
        }
    }
}

/// Checks that `value` is exactly one JSON object (whitespace around it allowed), and whether
/// its top level has a key in `reserved`. A key written with escapes is compared after
/// unescaping, so `"kafka\u005ftopic"` counts as `kafka_topic`.
pub fn scan_object(value: &[u8], reserved: &[&str]) -> Result<Shape> {
    let mut has_reserved_key = false;
    let members = top_level(value, |key, _| {
        has_reserved_key |= is_reserved(key, reserved)
    })?;
    Ok(Shape {
        is_empty: members == 0,
        has_reserved_key,
    })
}

/// The byte ranges of the top-level members of the object `value` whose keys are not in
/// `reserved`, in order: what is kept when reserved members are replaced. The ranges hold the
/// members' own text, so numbers and strings come out exactly as they went in.
pub fn members_without(value: &[u8], reserved: &[&str]) -> Result<Vec<Range<usize>>> {
    let mut kept = Vec::new();
    top_level(value, |key, member| {
        if !is_reserved(key, reserved) {
            kept.push(member);
        }
    })?;
    Ok(kept)
}

fn top_level(value: &[u8], on_member: impl FnMut(&[u8], Range<usize>)) -> Result<usize> {
    if let Err(e) = std::str::from_utf8(value) {
        return Err(format!("invalid UTF-8 at byte {}", e.valid_up_to()));
    }
    let mut scanner = Scanner {
        bytes: value,
        pos: 0,
    };
    scanner.skip_ws();
    if scanner.peek() != Some(b'{') {
        return scanner.error("expected `{`");
    }
    let members = scanner.object(1, on_member)?;
    scanner.skip_ws();
    if scanner.pos != value.len() {
        return scanner.error("trailing characters");
    }
    Ok(members)
}

/// Whether a raw key (escapes still in it) names one of `reserved`.
fn is_reserved(key: &[u8], reserved: &[&str]) -> bool {
    if key.contains(&b'\\') {
        serde_json::from_slice::<String>(&[b"\"", key, b"\""].concat())
            .is_ok_and(|k| reserved.contains(&k.as_str()))
    } else {
        reserved.iter().any(|r| r.as_bytes() == key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts(text: &str) -> bool {
        scan_object(text.as_bytes(), &["r"]).is_ok()
    }

    #[test]
    fn accepts_objects_of_every_kind() {
        for ok in [
            r#"{"a":"\ud83d\ude00 \uD83D\uDE00"}"#,
            "{}",
            " { } ",
            r#"{"a":1}"#,
            r#"{"a":-0.5e+10,"b":[1,2,{"c":null}],"d":true,"e":false,"f":"x\"y\\z\u00e9\n"}"#,
            "{\"é\":\"ünï\"}",
            r#"{"a":[]}"#,
            r#"{"a":[[],{}]}"#,
        ] {
            assert!(accepts(ok), "{ok}");
        }
    }

    #[test]
    fn refuses_what_is_not_one_object() {
        for bad in [
            "",
            "[]",
            "1",
            "\"s\"",
            "{",
            "}",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{,}",
            "{\"a\":1}{}",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":.5}",
            "{\"a\":1e}",
            "{\"a\":-}",
            "{\"a\":tru}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\u12\"}",
            "{\"a\":\"\u{1}\"}",
            "{a:1}",
            "{\"a\":[1,]}",
            "{\"a\":[1 2]}",
            "{\"a\":nul}",
        ] {
            assert!(!accepts(bad), "{bad:?}");
        }
        assert!(scan_object(b"{\"a\":\"\xff\"}", &[]).is_err());
        for lone in [
            r#"\ud800"#,
            r#"\udc00"#,
            r#"\ud800x"#,
            r#"\ud800\u0041"#,
            r#"\uDBFF\uE000"#,
        ] {
            let err = scan_object(format!("{{\"a\":\"{lone}\"}}").as_bytes(), &[]).unwrap_err();
            assert!(err.contains("surrogate"), "{lone}: {err}");
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(200), "]".repeat(200));
        assert!(!accepts(&deep));
    }

    #[test]
    fn finds_reserved_keys_at_the_top_level_only() {
        let shape = |t: &str| scan_object(t.as_bytes(), &["kafka_topic"]).unwrap();
        assert!(shape(r#"{"kafka_topic":1}"#).has_reserved_key);
        assert!(shape(r#"{"kafka\u005ftopic":1}"#).has_reserved_key);
        assert!(!shape(r#"{"a":{"kafka_topic":1}}"#).has_reserved_key);
        assert!(shape("{}").is_empty);
        assert!(!shape(r#"{"a":1}"#).is_empty);
    }

    /// The scanner agrees with serde_json on what is a JSON object, over many mutations of
    /// valid objects (bytes replaced, inserted, removed, from an alphabet of JSON's own bytes).
    #[test]
    fn agrees_with_serde_json() {
        let seeds = [
            r#"{"e":"trade","E":1767225600002,"s":"ETHUSDT","t":1000000,"p":"3498.80968637","q":"0.00685000","m":false}"#,
            r#"{"a":[1,-2.5e3,{"b":null,"c":[true,false]}],"d":"x\"y\\z"}"#,
            r#"{ "k" : [ ] , "l" : { } }"#,
        ];
        let alphabet = b"{}[]\":,0123456789.eE+- \tnulltruefalse\\/bfnrtax";
        let mut state: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut disagreements = Vec::new();
        for round in 0..30_000 {
            let mut bytes = seeds[round % seeds.len()].as_bytes().to_vec();
            for _ in 0..1 + next() % 3 {
                let at = (next() % bytes.len() as u64) as usize;
                let byte = alphabet[(next() % alphabet.len() as u64) as usize];
                match next() % 3 {
                    0 => bytes[at] = byte,
                    1 => bytes.insert(at, byte),
                    _ => {
                        bytes.remove(at);
                    }
                }
                if bytes.is_empty() {
                    bytes.push(b'{');
                }
            }
            let ours = scan_object(&bytes, &[]).is_ok();
            // serde_json's grammar-only path: a `Value` would also refuse numbers beyond f64,
            // which the grammar allows and this scan (like `IgnoredAny`) accepts.
            let is_object = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
            let theirs =
                is_object && serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok();
            if ours != theirs {
                disagreements.push(String::from_utf8_lossy(&bytes).into_owned());
            }
        }
        assert!(
            disagreements.is_empty(),
            "{} disagreements, e.g. {:?}",
            disagreements.len(),
            &disagreements[..disagreements.len().min(5)]
        );
    }
}
