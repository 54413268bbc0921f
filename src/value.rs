//! One SQLite cell, exactly as SQLite stores it, and its two encodings:
//! an SQL literal that D1 parses back to the same type and bits (used by `pack`), and a canonical
//! byte encoding for hashing (used by `validate`).
//!
//! Literals are chosen so that no value is rounded on the way: integers as decimal digits (the full
//! i64 range), REALs as the shortest decimal that parses back to the same bits (±inf as `9e999`),
//! TEXT as a quoted string unless it holds a NUL or invalid UTF-8 (then `CAST(X'..' AS TEXT)`),
//! and BLOBs as `X'..'`.

use std::fmt::Write;

/// A cell with the storage class SQLite reports for it (`typeof`).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    /// TEXT as stored: UTF-8 bytes, possibly with NULs or even invalid sequences.
    Text(Vec<u8>),
    Blob(Vec<u8>),
}

impl Value {
    /// The storage class name, as SQLite's `typeof()` says it.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Integer(_) => "integer",
            Value::Real(_) => "real",
            Value::Text(_) => "text",
            Value::Blob(_) => "blob",
        }
    }

    /// The size SQLite counts for the value (bytes of TEXT/BLOB, 8 for numbers).
    pub fn size(&self) -> usize {
        match self {
            Value::Null => 1,
            Value::Integer(_) | Value::Real(_) => 8,
            Value::Text(b) | Value::Blob(b) => b.len(),
        }
    }

    /// Appends an SQL literal for the value to `out`.
    pub fn write_literal(&self, out: &mut String) {
        match self {
            Value::Null => out.push_str("NULL"),
            Value::Integer(i) => {
                let _ = write!(out, "{i}");
            }
            Value::Real(r) => write_real(*r, out),
            Value::Text(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) if !text.contains('\0') => {
                    out.reserve(text.len() + 2);
                    out.push('\'');
                    for (i, part) in text.split('\'').enumerate() {
                        if i > 0 {
                            out.push_str("''");
                        }
                        out.push_str(part);
                    }
                    out.push('\'');
                }
                _ => {
                    out.push_str("CAST(");
                    write_hex_literal(bytes, out);
                    out.push_str(" AS TEXT)");
                }
            },
            Value::Blob(bytes) => write_hex_literal(bytes, out),
        }
    }

    /// The literal as a new string.
    pub fn literal(&self) -> String {
        let mut s = String::new();
        self.write_literal(&mut s);
        s
    }

    /// The value of the same type holding nothing (`''` or `X''`), used before a large value is
    /// appended in pieces.
    pub fn empty_like(&self) -> Value {
        match self {
            Value::Text(_) => Value::Text(Vec::new()),
            _ => Value::Blob(Vec::new()),
        }
    }

    /// Appends the canonical, versioned encoding used for hashing: a type tag, then for numbers
    /// their 8 bytes, for TEXT and BLOB a length and the bytes. Both sides of a comparison must
    /// produce the same bytes for the same stored value.
    pub fn write_canonical(&self, out: &mut Vec<u8>) {
        match self {
            Value::Null => out.push(0),
            Value::Integer(i) => {
                out.push(1);
                out.extend_from_slice(&i.to_le_bytes());
            }
            Value::Real(r) => {
                out.push(2);
                out.extend_from_slice(&r.to_bits().to_le_bytes());
            }
            Value::Text(b) => {
                out.push(3);
                out.extend_from_slice(&(b.len() as u64).to_le_bytes());
                out.extend_from_slice(b);
            }
            Value::Blob(b) => {
                out.push(4);
                out.extend_from_slice(&(b.len() as u64).to_le_bytes());
                out.extend_from_slice(b);
            }
        }
    }
}

fn write_real(r: f64, out: &mut String) {
    if r.is_nan() {
        // SQLite stores NaN as NULL; a NaN cannot come out of a database.
        out.push_str("NULL");
    } else if r.is_infinite() {
        out.push_str(if r > 0.0 { "9e999" } else { "-9e999" });
    } else if r == 0.0 || (1e-20..1e20).contains(&r.abs()) {
        // `{:?}` prints the shortest decimal that reads back to the same bits, always with a `.`
        // or an exponent, so SQLite reads it as REAL. SQLite's decimal parser is exact in this
        // range (measured against the local D1 engine), not far outside it.
        let _ = write!(out, "{r:?}");
    } else {
        // Elsewhere, mantissa × 2^exponent: both exact, and so is their product.
        let bits = r.to_bits();
        let exponent = ((bits >> 52) & 0x7ff) as i64;
        let fraction = bits & ((1 << 52) - 1);
        let (mantissa, power) = if exponent == 0 {
            (fraction, -1074)
        } else {
            (fraction | (1 << 52), exponent - 1075)
        };
        let sign = if r < 0.0 { "-" } else { "" };
        let _ = write!(out, "({sign}{mantissa}*pow(2,{power}))");
    }
}

/// Appends `X'..'` with the bytes in upper-case hex.
pub fn write_hex_literal(bytes: &[u8], out: &mut String) {
    out.reserve(bytes.len() * 2 + 3);
    out.push_str("X'");
    write_hex(bytes, out);
    out.push('\'');
}

/// Appends the bytes as upper-case hex digits.
pub fn write_hex(bytes: &[u8], out: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
}

/// Decodes hex digits (either case); `None` when the text is not hex.
pub fn decode_hex(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    bytes
        .chunks_exact(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// Quotes an identifier for SQL: `"name"` with inner quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string as an SQL text literal.
pub fn quote_text(text: &str) -> String {
    Value::Text(text.as_bytes().to_vec()).literal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_keep_type_and_exact_value() {
        assert_eq!(Value::Integer(i64::MIN).literal(), "-9223372036854775808");
        assert_eq!(Value::Real(1.0).literal(), "1.0");
        assert_eq!(Value::Real(-0.0).literal(), "-0.0");
        assert_eq!(Value::Real(f64::INFINITY).literal(), "9e999");
        assert_eq!(Value::Real(1e15).literal(), "1000000000000000.0");
        assert_eq!(Value::Real(-5e-324).literal(), "(-1*pow(2,-1074))");
        assert_eq!(Value::Text(b"it's".to_vec()).literal(), "'it''s'");
        assert_eq!(
            Value::Text(b"a\0b".to_vec()).literal(),
            "CAST(X'610062' AS TEXT)"
        );
        assert_eq!(Value::Blob(vec![0, 255]).literal(), "X'00FF'");
    }

    #[test]
    fn sqlite_reads_every_literal_back_to_the_same_value() {
        let db = rusqlite::Connection::open_in_memory().unwrap();
        // D1 has SQLite's math functions; this build of SQLite does not, so pow is supplied.
        db.create_scalar_function(
            "pow",
            2,
            rusqlite::functions::FunctionFlags::SQLITE_DETERMINISTIC,
            |ctx| Ok(ctx.get::<f64>(0)?.powf(ctx.get::<f64>(1)?)),
        )
        .unwrap();
        let mut values = vec![
            Value::Integer(i64::MIN),
            Value::Integer(i64::MAX),
            Value::Text("it's; -- \r\n 🦀".as_bytes().to_vec()),
            Value::Text(b"a\0b".to_vec()),
            Value::Text(vec![0xff, 0xfe]),
            Value::Blob(vec![]),
        ];
        for r in [
            0.0,
            -0.0,
            5e-324,
            -1.5e-310,
            2.2250738585072014e-308,
            0.1,
            1e-21,
            1e20,
            1e300,
            f64::MAX,
            f64::MIN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ] {
            values.push(Value::Real(r));
        }
        let mut seed = 0x9e3779b97f4a7c15u64;
        for _ in 0..2000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let r = f64::from_bits(seed);
            if r.is_finite() {
                values.push(Value::Real(r));
            }
        }
        for v in values {
            let sql = format!("SELECT {}", v.literal());
            let back = db
                .query_row(&sql, [], |r| Ok(crate::source::value(r.get_ref(0)?)))
                .unwrap();
            let mut a = Vec::new();
            let mut b = Vec::new();
            v.write_canonical(&mut a);
            back.write_canonical(&mut b);
            assert_eq!(a, b, "{sql} read back as {back:?}");
        }
    }

    #[test]
    fn hex_round_trips() {
        let bytes: Vec<u8> = (0..=255).collect();
        let mut s = String::new();
        write_hex(&bytes, &mut s);
        assert_eq!(decode_hex(&s).unwrap(), bytes);
        assert_eq!(decode_hex(&s.to_lowercase()).unwrap(), bytes);
        assert!(decode_hex("0G").is_none());
    }

    #[test]
    fn canonical_encoding_separates_types_with_same_digits() {
        let mut a = Vec::new();
        Value::Text(b"12".to_vec()).write_canonical(&mut a);
        let mut b = Vec::new();
        Value::Integer(12).write_canonical(&mut b);
        assert_ne!(a, b);
    }
}
