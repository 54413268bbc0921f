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
        Json::Array(a) => Value::Blob(a.iter().map(|b| b.as_u64().unwrap_or(0) as u8).collect()),
        Json::Object(o) => Value::Text(Json::Object(o).to_string().into_bytes()),
    }
}

/// TEXT and BLOB values longer than this are read in pieces of this many bytes (their hex must
/// stay under D1's 2,000,000-byte value limit).
const PIECE: usize = 500_000;

/// The select expression that reads `column` exactly. JSON's type tells the storage class:
/// a number is a REAL (JSON carries doubles exactly, shortest round-trip decimal both ways);
/// text is a type letter and the value: `i` integer (JSON numbers would round beyond 2^53),
/// `r` a REAL JSON cannot carry (-0.0, ±inf), `t` TEXT and `b` BLOB in hex (`#<length>` for a
/// value to be read in pieces). NULL stays null.
pub fn exact_select(column: &str) -> String {
    let big = |tag: &str| {
        format!(
            "CASE WHEN length(CAST({c} AS BLOB)) > {PIECE} THEN '{tag}#' || length(CAST({c} AS BLOB)) \
             ELSE '{tag}' || hex({c}) END",
            c = column
        )
    };
    format!(
        "CASE typeof({c}) WHEN 'integer' THEN 'i' || {c} \
         WHEN 'real' THEN (CASE WHEN {c} = 0 OR abs({c}) = 9e999 THEN 'r' || {real} ELSE {c} END) \
         WHEN 'text' THEN {text} WHEN 'blob' THEN {blob} END",
        c = column,
        real = real_bits_sql(column),
        text = big("t"),
        blob = big("b"),
    )
}

/// SQL giving a REAL exactly, as `±<integer>p<exponent>` (value = integer × 2^exponent), `±0`
/// or `±inf`. Decimal printing in SQL is not exact for every double; scaling by powers of two is.
/// The exponent comes from `log2` with two bits of slack, so the integer is exact whichever way
/// `log2` rounds; the scale factor is split in two so neither overflows.
fn real_bits_sql(c: &str) -> String {
    let e = format!("(CAST(floor(log2(abs({c}))) AS INTEGER) - 54)");
    format!(
        "CASE WHEN {c} = 0 THEN (CASE WHEN atan2({c}, -1) < 0 THEN '-0' ELSE '+0' END) \
         WHEN abs({c}) = 9e999 THEN (CASE WHEN {c} < 0 THEN '-inf' ELSE '+inf' END) \
         ELSE (CASE WHEN {c} < 0 THEN '-' ELSE '+' END) || \
         CAST(abs({c}) * pow(2, -{e} / 2) * pow(2, -{e} - (-{e} / 2)) AS INTEGER) || 'p' || {e} END"
    )
}

/// Turns a cell read with [`exact_select`] back into a value; a large TEXT or BLOB comes back
/// as a placeholder of its length, to be read in pieces.
pub fn decode_cell(cell: &Json, context: &dyn Fn() -> String) -> Result<Value> {
    let bad = |what: &str| Error::Refused(format!("{}: cannot read {what} from D1", context()));
    if let Json::Number(n) = cell {
        return Ok(Value::Real(n.as_f64().ok_or_else(|| bad("a real"))?));
    }
    let Some(text) = cell.as_str() else {
        return if cell.is_null() {
            Ok(Value::Null)
        } else {
            Err(bad("a value"))
        };
    };
    let (tag, rest) = text.split_at(text.len().min(1));
    Ok(match tag {
        "i" => Value::Integer(rest.parse().map_err(|_| bad("an integer"))?),
        "r" => Value::Real(decode_real(rest).ok_or_else(|| bad("a real"))?),
        "t" | "b" => {
            let bytes = match rest.strip_prefix('#') {
                Some(len) => vec![0u8; len.parse().map_err(|_| bad("a length"))?],
                None => decode_hex(rest).ok_or_else(|| bad("a text or blob"))?,
            };
            if tag == "t" {
                Value::Text(bytes)
            } else {
                Value::Blob(bytes)
            }
        }
        _ => return Err(bad("a value")),
    })
}

fn decode_real(text: &str) -> Option<f64> {
    let (sign, rest) = text.split_at(1);
    let magnitude = match rest {
        "0" => 0.0,
        "inf" => f64::INFINITY,
        scaled => {
            let (m, e) = scaled.split_once('p')?;
            let m: u64 = m.parse().ok()?;
            let e: i32 = e.parse().ok()?;
            // m < 2^56 is exact as a double; two exact power-of-two steps keep every
            // intermediate in the normal range, so the product is the value itself.
            let half = e / 2;
            (m as f64) * power_of_two(half) * power_of_two(e - half)
        }
    };
    Some(if sign == "-" { -magnitude } else { magnitude })
}

/// 2^k exactly, for k in the normal range.
fn power_of_two(k: i32) -> f64 {
    f64::from_bits(((k + 1023) as u64) << 52)
}

/// A D1 database as one side of a validation (or the source of a rollback): exact reads.
pub struct D1Side<'a> {
    pub client: &'a D1Client,
    pub label: &'static str,
}

/// Statements per request when reading.
const READS_PER_REQUEST: usize = 50;

impl D1Side<'_> {
    /// Fills in a large TEXT or BLOB value piece by piece.
    fn read_large(
        &self,
        shape: &crate::pack::Shape,
        row: &mut [Value],
        column: usize,
    ) -> Result<()> {
        let len = row[column].size();
        let predicate = shape.key_predicate(row);
        let c = &shape.columns[column];
        let table = crate::value::quote_ident(&shape.table);
        let sqls: Vec<String> = (0..len)
            .step_by(PIECE)
            .map(|at| format!("SELECT hex(substr(CAST({c} AS BLOB), {}, {PIECE})) FROM {table} WHERE {predicate}", at + 1))
            .collect();
        let mut bytes = Vec::with_capacity(len);
        for chunk in sqls.chunks(4) {
            for result in self.client.read(chunk)? {
                let hex = result
                    .rows
                    .first()
                    .and_then(|r| r.first())
                    .and_then(|v| v.as_str())
                    .unwrap_or_default();
                bytes.extend(decode_hex(hex).ok_or_else(|| {
                    Error::Refused(format!(
                        "table {}, column {c}: cannot read a large value from D1",
                        shape.table
                    ))
                })?);
            }
        }
        row[column] = match row[column] {
            Value::Text(_) => Value::Text(bytes),
            _ => Value::Blob(bytes),
        };
        Ok(())
    }
}

impl crate::validate::RowSide for D1Side<'_> {
    fn label(&self) -> &'static str {
        self.label
    }

    fn count(&self, table: &str) -> Result<u64> {
        let r = self.client.query(&format!(
            "SELECT count(*) FROM {}",
            crate::value::quote_ident(table)
        ))?;
        Ok(r.rows
            .first()
            .and_then(|row| row.first())
            .and_then(|v| v.as_u64())
            .unwrap_or(0))
    }

    fn select(&self, shape: &crate::pack::Shape, tails: &[String]) -> Result<Vec<Vec<Vec<Value>>>> {
        let list: Vec<String> = shape.columns.iter().map(|c| exact_select(c)).collect();
        let head = format!(
            "SELECT {} FROM {}",
            list.join(", "),
            crate::value::quote_ident(&shape.table)
        );
        let mut out = Vec::with_capacity(tails.len());
        for chunk in tails.chunks(READS_PER_REQUEST) {
            let sqls: Vec<String> = chunk.iter().map(|t| format!("{head} {t}")).collect();
            let results = self.client.read(&sqls)?;
            for result in results {
                let mut rows = Vec::with_capacity(result.rows.len());
                let mut large = Vec::new();
                for raw in &result.rows {
                    let mut row = Vec::with_capacity(shape.columns.len());
                    for (i, cell) in raw.iter().enumerate() {
                        let context =
                            || format!("table {}, column {}", shape.table, shape.columns[i]);
                        if cell
                            .as_str()
                            .and_then(|t| t.get(1..))
                            .is_some_and(|r| r.starts_with('#'))
                        {
                            large.push((rows.len(), i));
                        }
                        row.push(decode_cell(cell, &context)?);
                    }
                    rows.push(row);
                }
                for (r, c) in large {
                    self.read_large(shape, &mut rows[r], c)?;
                }
                out.push(rows);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reals_decode_with_sign_and_infinity() {
        assert_eq!(decode_real("-0").unwrap().to_bits(), (-0.0f64).to_bits());
        assert_eq!(decode_real("+inf").unwrap(), f64::INFINITY);
        assert_eq!(decode_real("-inf").unwrap(), f64::NEG_INFINITY);
        assert_eq!(decode_real("+7205759403792794p-56").unwrap(), 0.1);
        assert_eq!(decode_real("+18014398509481984p-1128").unwrap(), 5e-324);
    }
}
