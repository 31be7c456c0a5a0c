//! Durations as pipeline files write them in a stage's `config:`.

/// `500ms`, `30s`, `5m`, `2h`, `1d` → milliseconds. Zero, a missing or unknown unit, and a
/// duration past `i64` milliseconds are refused with a sentence that quotes the text.
pub fn duration_ms(text: &str) -> Result<i64, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}`: a duration needs a unit (ms, s, m, h or d)"))?;
    let (number, unit) = text.split_at(split);
    let number: i64 = number
        .parse()
        .map_err(|_| format!("`{text}`: expected a whole number and a unit, such as `5m`"))?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "`{text}`: unknown unit `{unit}` (ms, s, m, h or d)"
            ));
        }
    };
    if number == 0 {
        return Err(format!("`{text}`: must be longer than zero"));
    }
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("`{text}`: too long"))
}

#[cfg(test)]
mod tests {
    use super::duration_ms;

    #[test]
    fn units_scale_and_bad_text_is_refused() {
        assert_eq!(duration_ms("500ms"), Ok(500));
        assert_eq!(duration_ms("30s"), Ok(30_000));
        assert_eq!(duration_ms("5m"), Ok(300_000));
        assert_eq!(duration_ms("2h"), Ok(7_200_000));
        assert_eq!(duration_ms("1d"), Ok(86_400_000));
        for (text, error) in [
            ("30", "`30`: a duration needs a unit (ms, s, m, h or d)"),
            ("m", "`m`: expected a whole number and a unit, such as `5m`"),
            (
                "-1s",
                "`-1s`: expected a whole number and a unit, such as `5m`",
            ),
            ("3x", "`3x`: unknown unit `x` (ms, s, m, h or d)"),
            ("0s", "`0s`: must be longer than zero"),
            ("99999999999999999d", "`99999999999999999d`: too long"),
        ] {
            assert_eq!(duration_ms(text), Err(error.to_string()), "{text}");
        }
    }
}
