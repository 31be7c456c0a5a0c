//! Reads a few top-level fields of one JSON object in a single pass, validating the whole text
//! as JSON but converting nothing it does not hand out.
//!
//! A trade is parsed for every record, and with `serde_json` that was over half of the stage's
//! time: every key became a string and was compared, every number was converted. Here a value
//! the stage does not want is only checked and skipped, and a wanted one is handed out as the
//! bytes it was written as. `tests::agrees_with_serde_json` holds it to `serde_json` on what is
//! JSON and what is not.

/// A wanted field's value as written.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Raw<'a> {
    /// A string: the bytes between the quotes, and whether they hold escapes.
    Str(&'a [u8], bool),
    /// A number, as written.
    Num(&'a [u8]),
    /// `true`, `false` or `null`.
    Lit(&'a [u8]),
    /// An object or an array.
    Nested(&'static str),
}

impl Raw<'_> {
    /// The value as an error message quotes it.
    pub fn describe(&self) -> String {
        match self {
            Raw::Str(s, _) => format!("{:?}", String::from_utf8_lossy(s)),
            Raw::Num(s) | Raw::Lit(s) => String::from_utf8_lossy(s).into_owned(),
            Raw::Nested(what) => (*what).into(),
        }
    }

    /// The text of a string value, unescaped; `None` for another kind of value or bytes that
    /// are not UTF-8.
    pub fn text(&self) -> Option<std::borrow::Cow<'_, str>> {
        match *self {
            Raw::Str(s, false) => std::str::from_utf8(s).ok().map(Into::into),
            Raw::Str(s, true) => unescape(s).map(Into::into),
            _ => None,
        }
    }
}

/// The values of the top-level keys named in `wanted` (the last, if a key repeats), or why
/// `value` is not one JSON object.
pub fn fields<'a, const N: usize>(
    value: &'a [u8],
    wanted: [Option<&str>; N],
) -> Result<[Option<Raw<'a>>; N], String> {
    read_fields(value, wanted).map_err(|bad| match bad.expected {
        "" => format!("the text ends at byte {}", bad.at),
        expected => format!("expected {expected} at byte {}", bad.at),
    })
}

fn read_fields<'a, const N: usize>(
    value: &'a [u8],
    wanted: [Option<&str>; N],
) -> Read<[Option<Raw<'a>>; N]> {
    let mut r = Reader { b: value, i: 0 };
    let mut found = [None; N];
    r.ws();
    r.expect(b'{', "`{`")?;
    r.ws();
    if r.peek() == Some(b'}') {
        r.i += 1;
    } else {
        loop {
            r.ws();
            r.expect(b'"', "a string")?;
            let (key, escaped) = r.string()?;
            r.ws();
            r.expect(b':', "`:`")?;
            r.ws();
            let slot = wanted.iter().position(|w| match w {
                Some(w) if !escaped => same(w.as_bytes(), key),
                Some(w) => unescape(key).is_some_and(|k| k == *w),
                None => false,
            });
            let v = r.value()?;
            if let Some(slot) = slot {
                found[slot] = Some(v);
            }
            r.ws();
            match r.next()? {
                b',' => continue,
                b'}' => break,
                _ => return Err(r.bad("`,` or `}`")),
            }
        }
    }
    r.ws();
    if r.i < r.b.len() {
        return Err(Bad {
            at: r.i,
            expected: "the end of the text",
        });
    }
    Ok(found)
}

/// `a == b`, inline: keys are short, and a call to `memcmp` per comparison cost more than the
/// comparison.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// The text of a string's contents (between the quotes), escapes resolved.
fn unescape(s: &[u8]) -> Option<String> {
    let quoted = [&b"\""[..], s, b"\""].concat();
    serde_json::from_slice(&quoted).ok()
}

/// Where reading stopped and what it expected there; a sentence only once, at the end.
#[derive(Clone, Copy, Debug)]
struct Bad {
    at: usize,
    expected: &'static str,
}

type Read<T> = Result<T, Bad>;

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline]
    fn next(&mut self) -> Read<u8> {
        let c = self.peek().ok_or(Bad {
            at: self.i,
            expected: "",
        })?;
        self.i += 1;
        Ok(c)
    }

    /// What was expected where the byte just read is.
    fn bad(&self, expected: &'static str) -> Bad {
        Bad {
            at: self.i - 1,
            expected,
        }
    }

    #[inline]
    fn expect(&mut self, want: u8, expected: &'static str) -> Read<()> {
        if self.next()? == want {
            Ok(())
        } else {
            Err(self.bad(expected))
        }
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.i += 1;
        }
    }

    /// After an opening quote: the contents up to the closing quote, and whether they hold
    /// escapes. Control characters are refused and escapes checked, as JSON wants.
    fn string(&mut self) -> Read<(&'a [u8], bool)> {
        let start = self.i;
        let mut escaped = false;
        loop {
            // Plain bytes in one tight loop; only quotes, escapes and control characters stop it.
            self.i += self.b[self.i..]
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
                .unwrap_or(self.b.len() - self.i);
            match self.next()? {
                b'"' => return Ok((&self.b[start..self.i - 1], escaped)),
                b'\\' => {
                    escaped = true;
                    match self.next()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                        b'u' => {
                            for _ in 0..4 {
                                let c = self.next()?;
                                if !c.is_ascii_hexdigit() {
                                    return Err(self.bad("a hex digit"));
                                }
                            }
                        }
                        _ => return Err(self.bad("an escape")),
                    }
                }
                c if c < 0x20 => return Err(self.bad("no control character")),
                _ => {}
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        self.i - start
    }

    /// A number: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Read<&'a [u8]> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return Err(self.bad("a digit")),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(Bad {
                    at: self.i,
                    expected: "a digit",
                });
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(Bad {
                    at: self.i,
                    expected: "a digit",
                });
            }
        }
        Ok(&self.b[start..self.i])
    }

    fn literal(&mut self, word: &'static [u8]) -> Read<&'a [u8]> {
        let start = self.i;
        if self.b[start..].starts_with(word) {
            self.i += word.len();
            Ok(&self.b[start..self.i])
        } else {
            Err(Bad {
                at: start,
                expected: "a JSON value",
            })
        }
    }

    /// One value, checked; nested objects and arrays are skipped.
    fn value(&mut self) -> Read<Raw<'a>> {
        match self.peek() {
            Some(b'"') => {
                self.i += 1;
                let (s, escaped) = self.string()?;
                Ok(Raw::Str(s, escaped))
            }
            Some(b'-' | b'0'..=b'9') => self.number().map(Raw::Num),
            Some(b't') => self.literal(b"true").map(Raw::Lit),
            Some(b'f') => self.literal(b"false").map(Raw::Lit),
            Some(b'n') => self.literal(b"null").map(Raw::Lit),
            Some(open @ (b'{' | b'[')) => {
                self.nested()?;
                Ok(Raw::Nested(if open == b'{' {
                    "an object"
                } else {
                    "an array"
                }))
            }
            _ => Err(Bad {
                at: self.i,
                expected: "a JSON value",
            }),
        }
    }

    /// At `{` or `[`: skips the object or array, with a stack of what is open rather than
    /// recursion, so any depth is fine (as `serde_json` skips values).
    fn nested(&mut self) -> Read<()> {
        let mut open: Vec<u8> = Vec::new();
        'open: loop {
            let c = self.next()?;
            open.push(if c == b'{' { b'}' } else { b']' });
            self.ws();
            if self.peek() == open.last().copied() {
                // Empty.
                self.i += 1;
                open.pop();
                if open.is_empty() || !self.after_item(&mut open)? {
                    return Ok(());
                }
            }
            // Items of the innermost container, until one opens another.
            loop {
                self.ws();
                if open.last() == Some(&b'}') {
                    self.expect(b'"', "a string")?;
                    self.string()?;
                    self.ws();
                    self.expect(b':', "`:`")?;
                    self.ws();
                }
                if let Some(b'{' | b'[') = self.peek() {
                    continue 'open;
                }
                self.value()?;
                if !self.after_item(&mut open)? {
                    return Ok(());
                }
            }
        }
    }

    /// After an item: a `,` (another item follows: `true`) or closing brackets, as many as
    /// come, until a `,` (`true`) or the outermost one (`false`).
    fn after_item(&mut self, open: &mut Vec<u8>) -> Read<bool> {
        loop {
            self.ws();
            match self.next()? {
                b',' => return Ok(true),
                c if Some(c) == open.last().copied() => {
                    open.pop();
                    if open.is_empty() {
                        return Ok(false);
                    }
                }
                _ => return Err(self.bad("`,` or a closing bracket")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::de::IgnoredAny;
    use serde_json::{Map, Value};

    use super::{Raw, fields};

    /// Every input: accepted exactly when `serde_json` reads it as an object, and then with
    /// the same wanted values.
    #[test]
    fn agrees_with_serde_json() {
        let base: &[&str] = &[
            r#"{"e":"trade","E":1767225600123,"s":"BTCUSDT","t":42,"p":"87000.10","q":"0.002","T":1767225600120,"m":true,"M":true}"#,
            r#"{"s":"A","p":1.5,"q":2e3,"x":{"a":[1,2,{"b":null}],"c":"\u00e9\n"},"y":[],"z":{}}"#,
            r#" { "s" : "A\"B" , "p" : -0.0 , "q" : 1E-2 } "#,
            r#"{"\u0073":"escaped key","p":"1","q":"1"}"#,
            r#"{}"#,
            r#"{"s":"A","s":"B"}"#,
            r#"{"a":[{},[],{"b":[1,{"c":[]}]},[[]]],"s":"\u00e9t\u00e9","p":"2"}"#,
        ];
        let mut inputs: Vec<Vec<u8>> = base.iter().map(|s| s.as_bytes().to_vec()).collect();
        // Every prefix, and every single-byte change to a few telling bytes, of each.
        for s in base {
            let b = s.as_bytes();
            for end in 0..b.len() {
                inputs.push(b[..end].to_vec());
            }
            for i in 0..b.len() {
                for c in [
                    b'"', b'\\', b'{', b'}', b'[', b']', b',', b':', b'0', b'.', b'e', b'-', 0x1f,
                    b'x', 0xff,
                ] {
                    let mut changed = b.to_vec();
                    changed[i] = c;
                    inputs.push(changed);
                }
            }
        }
        for bad in [
            "",
            "[]",
            "1",
            "\"s\"",
            "{\"s\":01}",
            "{\"s\":1.}",
            "{\"s\":.5}",
            "{\"s\":+1}",
            "{\"s\":tru}",
            "{\"s\":1,}",
            "{,}",
            "{\"s\"}",
            "{\"s\":\"\\x\"}",
            "{\"s\":\"\\u12G4\"}",
            "{} {}",
            "{\"a\":[1,]}",
            "{\"a\":[,1]}",
            "{\"a\":{\"b\"}}",
        ] {
            inputs.push(bad.as_bytes().to_vec());
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(200), "]".repeat(200));
        inputs.push(deep.into_bytes());
        let mut accepted = 0;
        for input in &inputs {
            let ours = fields(input, [Some("s"), Some("p"), Some("q")]);
            // What the stage did before: serde_json checks skipped values as JSON without
            // converting them (so, like this reader, without checking their UTF-8).
            let is_object = input.iter().find(|c| !c.is_ascii_whitespace()) == Some(&b'{');
            let valid = is_object && serde_json::from_slice::<IgnoredAny>(input).is_ok();
            let text = String::from_utf8_lossy(input);
            assert_eq!(ours.is_ok(), valid, "{text}: {ours:?}");
            let (Ok(found), Ok(map)) = (&ours, serde_json::from_slice::<Map<String, Value>>(input))
            else {
                continue;
            };
            accepted += 1;
            for (slot, name) in ["s", "p", "q"].iter().enumerate() {
                let want = map.get(*name);
                let got = found[slot].map(|raw| match raw {
                    Raw::Str(..) => Value::String(raw.text().unwrap().into()),
                    Raw::Num(n) | Raw::Lit(n) => serde_json::from_slice(n).unwrap(),
                    Raw::Nested(_) => want.cloned().unwrap(),
                });
                assert_eq!(got.as_ref(), want, "{text}: field {name}");
            }
        }
        assert!(
            accepted > 50,
            "only {accepted} of {} accepted",
            inputs.len()
        );
    }
}
