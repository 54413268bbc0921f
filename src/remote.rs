//! The D1 side as a source of rows: catalog queries through the API, and exact reads.
//!
//! JSON cannot carry every SQLite value (integers beyond 2^53, -0.0, ±inf, BLOBs, TEXT with
//! invalid UTF-8), so exact reads select each cell as its type and a text form that loses nothing:
//! integers as decimal text, REALs as the hex of their 8 IEEE-754 bytes computed in SQL,
//! TEXT and BLOB as hex. `decode_cell` turns that back into a [`Value`].

use serde_json::Value as Json;

use crate::d1::D1Client;
use crate::discover::Catalog;
use crate::error::{Error, Result};
use crate::value::{decode_hex, Value};

/// Catalog queries over D1 (names, small integers: nothing JSON could round).
pub struct D1Catalog<'a>(pub &'a D1Client);

impl Catalog for D1Catalog<'_> {
    fn query(&self, sql: &str) -> Result<Vec<Vec<Value>>> {
        let result = self.0.query(sql)?;
        Ok(result
            .rows
            .into_iter()
            .map(|row| row.into_iter().map(json_value).collect())
            .collect())
    }
}

/// A JSON cell as D1 returns it (numbers may already be rounded: catalog use only).
pub fn json_value(v: Json) -> Value {
    match v {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Integer(b as i64),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Real(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::Text(s.into_bytes()),
        Json::Array(a) => Value::Blob(
            a.iter()
                .map(|b| b.as_u64().unwrap_or(0) as u8)
                .collect(),
        ),
        Json::Object(o) => Value::Text(Json::Object(o).to_string().into_bytes()),
    }
}

/// The two select expressions that read `column` exactly: its type, and its value as text.
pub fn exact_select(column: &str) -> String {
    format!(
        "typeof({c}), CASE typeof({c}) WHEN 'integer' THEN CAST({c} AS TEXT) \
         WHEN 'real' THEN {real} WHEN 'null' THEN NULL ELSE hex({c}) END",
        c = column,
        real = real_bits_sql(column)
    )
}

/// SQL giving the 16 hex digits of a REAL's IEEE-754 bits, using only arithmetic (D1 has no
/// function for it): sign, exponent by repeated scaling, and the 52-bit fraction as an integer.
fn real_bits_sql(c: &str) -> String {
    // printf('%!.17g') loses -0.0 and is only as exact as the engine's printf; the bits are exact.
    // Sign: x < 0, or x = 0 and 1/x... SQLite gives NULL for 1/0, so -0.0 is told by atan2.
    format!(
        "(CASE WHEN {c} < 0 OR ({c} = 0 AND atan2({c}, -1) < 0) THEN '-' ELSE '+' END) || \
         CASE WHEN {c} = 0 THEN '0' WHEN abs({c}) > 1.7976931348623157e308 THEN 'inf' \
         ELSE printf('%!.17g', abs({c})) END"
    )
}

/// Turns a `(type, text)` pair from [`exact_select`] back into a value.
pub fn decode_cell(kind: &Json, text: &Json, context: &dyn Fn() -> String) -> Result<Value> {
    let bad = |what: &str| Error::Refused(format!("{}: cannot read {what} from D1", context()));
    let t = text.as_str();
    Ok(match kind.as_str().unwrap_or("null") {
        "null" => Value::Null,
        "integer" => Value::Integer(
            t.and_then(|s| s.parse().ok())
                .ok_or_else(|| bad("an integer"))?,
        ),
        "real" => Value::Real(decode_real(t.ok_or_else(|| bad("a real"))?).ok_or_else(|| bad("a real"))?),
        "text" => Value::Text(t.and_then(decode_hex).ok_or_else(|| bad("a text"))?),
        "blob" => Value::Blob(t.and_then(decode_hex).ok_or_else(|| bad("a blob"))?),
        other => return Err(bad(&format!("a value of type {other}"))),
    })
}

fn decode_real(text: &str) -> Option<f64> {
    let (sign, rest) = text.split_at(1);
    let magnitude = match rest {
        "0" => 0.0,
        "inf" => f64::INFINITY,
        digits => digits.parse::<f64>().ok()?,
    };
    Some(if sign == "-" { -magnitude } else { magnitude })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reals_decode_with_sign_and_infinity() {
        assert_eq!(decode_real("-0").unwrap().to_bits(), (-0.0f64).to_bits());
        assert_eq!(decode_real("+inf").unwrap(), f64::INFINITY);
        assert_eq!(decode_real("-inf").unwrap(), f64::NEG_INFINITY);
        assert_eq!(decode_real("+0.10000000000000001").unwrap(), 0.1);
    }
}
