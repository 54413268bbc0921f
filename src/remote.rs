//! The D1 side as a source of rows: catalog queries through the API, and exact reads.
//!
//! JSON cannot carry every SQLite value (integers beyond 2^53, -0.0, ±inf, BLOBs, TEXT with
//! invalid UTF-8), nor tell a REAL 14.0 from an INTEGER 14. Exact reads therefore let D1 answer
//! the values a column's affinity favours as they are, when JSON carries them exactly, and
//! select every other value as tagged text that loses nothing (see [`exact_select`]).
//! `decode_cell` turns either back into a [`Value`].

use std::collections::HashMap;

use serde_json::Value as Json;

use crate::d1::D1Client;
use crate::discover::Affinity;
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

    /// Up to [`CATALOG_PER_REQUEST`] queries per request.
    fn query_many(&self, sqls: &[String]) -> Result<Vec<Vec<Vec<Value>>>> {
        let mut out = Vec::with_capacity(sqls.len());
        for chunk in sqls.chunks(CATALOG_PER_REQUEST) {
            for result in self.0.read(chunk)? {
                out.push(
                    result
                        .rows
                        .into_iter()
                        .map(|row| row.into_iter().map(json_value).collect())
                        .collect(),
                );
            }
        }
        Ok(out)
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

/// The select expression that reads `column` exactly, cheaply for the values its affinity
/// favours. Those come back bare, as D1 gives them, when JSON carries them exactly:
/// - INTEGER and NUMERIC: integers within ±(2^53 - 1), and REALs with a fraction (JSON tells
///   them apart: an integer has no `.` or exponent, a REAL with a fraction always has one);
/// - REAL: finite REALs other than -0.0 (every JSON number is then a REAL; serde_json reads the
///   shortest round-trip decimal back to the same double);
/// - TEXT: TEXT of printable ASCII and nothing else, no NUL (valid UTF-8 that JSON carries
///   unchanged);
/// - BLOB (no type): REALs other than 0 and ±inf.
///
/// Every other value comes back tagged, as text starting with U+0001 (a bare TEXT never holds
/// it): `i` integer in decimal, `r` REAL as in [`real_bits_sql`], `t` TEXT and `b` BLOB in hex,
/// or `t#<length>` / `b#<length>` for a value to be read in pieces. NULL stays null.
pub fn exact_select(column: &str, affinity: Affinity) -> String {
    let c = column;
    let bare = match affinity {
        Affinity::Integer | Affinity::Numeric => format!(
            "typeof({c}) = 'integer' AND {c} BETWEEN -{MAX_SAFE} AND {MAX_SAFE} \
             OR typeof({c}) = 'real' AND {c} <> floor({c})"
        ),
        Affinity::Real => format!(
            "typeof({c}) = 'real' AND abs({c}) < 9e999 AND ({c} <> 0 OR atan2({c}, -1) > 0)"
        ),
        // GLOB stops at a NUL, as `length` of TEXT does: a NUL shows as fewer characters than
        // bytes (as does anything beyond ASCII).
        Affinity::Text => format!(
            "typeof({c}) = 'text' AND {c} NOT GLOB '*[^ -~]*' \
             AND length({c}) = length(CAST({c} AS BLOB))"
        ),
        Affinity::Blob => format!("typeof({c}) = 'real' AND {c} <> 0 AND abs({c}) < 9e999"),
    };
    let big = |tag: &str| {
        format!(
            "CASE WHEN length(CAST({c} AS BLOB)) > {PIECE} THEN '{tag}#' || length(CAST({c} AS BLOB)) \
             ELSE '{tag}' || hex({c}) END"
        )
    };
    format!(
        "CASE WHEN {c} IS NULL THEN NULL WHEN {bare} THEN {c} \
         ELSE char(1) || (CASE typeof({c}) WHEN 'integer' THEN 'i' || {c} \
         WHEN 'real' THEN 'r' || {real} WHEN 'text' THEN {text} ELSE {blob} END) END",
        real = real_bits_sql(c),
        text = big("t"),
        blob = big("b"),
    )
}

/// The largest integer a JSON number (an IEEE double) carries exactly, 2^53 - 1.
const MAX_SAFE: i64 = (1 << 53) - 1;

/// The first character of a tagged cell.
const TAG: char = '\u{1}';

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

/// Turns a cell read with [`exact_select`] (for a column of `affinity`) back into a value; a
/// large TEXT or BLOB comes back as a placeholder of its length, to be read in pieces.
pub fn decode_cell(cell: &Json, affinity: Affinity, context: &dyn Fn() -> String) -> Result<Value> {
    let bad = |what: &str| Error::Refused(format!("{}: cannot read {what} from D1", context()));
    let text = match cell {
        Json::Null => return Ok(Value::Null),
        Json::Number(n) => {
            let integers = matches!(affinity, Affinity::Integer | Affinity::Numeric);
            return match (integers, n.as_i64()) {
                (true, Some(i)) => Ok(Value::Integer(i)),
                _ if affinity == Affinity::Text => Err(bad("a value")),
                _ => Ok(Value::Real(n.as_f64().ok_or_else(|| bad("a real"))?)),
            };
        }
        Json::String(text) => text,
        _ => return Err(bad("a value")),
    };
    let Some(tagged) = text.strip_prefix(TAG) else {
        return if affinity == Affinity::Text {
            Ok(Value::Text(text.as_bytes().to_vec()))
        } else {
            Err(bad("a value"))
        };
    };
    let (tag, rest) = tagged.split_at(tagged.len().min(1));
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

/// Whether a cell read with [`exact_select`] is a placeholder for a value read in pieces.
fn is_placeholder(cell: &Json) -> bool {
    cell.as_str()
        .and_then(|t| t.strip_prefix(TAG))
        .is_some_and(|t| t.get(1..).is_some_and(|r| r.starts_with('#')))
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

/// Catalog queries per request: short statements with short answers (three per table).
pub const CATALOG_PER_REQUEST: usize = 300;

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

    fn surveys(&self, shapes: &[&crate::pack::Shape]) -> Result<Vec<crate::validate::Survey>> {
        let sqls: Vec<String> = shapes
            .iter()
            .map(|s| crate::validate::survey_sql(s, &crate::value::quote_ident(&s.table)))
            .collect();
        let mut out = Vec::with_capacity(sqls.len());
        for chunk in sqls.chunks(READS_PER_REQUEST) {
            for result in self.client.read(chunk)? {
                let row = result.rows.first();
                let cell = |i: usize| row.and_then(|r| r.get(i));
                out.push(crate::validate::survey_of(
                    cell(0).and_then(|v| v.as_u64()),
                    cell(1).and_then(|v| v.as_f64()),
                ));
            }
        }
        Ok(out)
    }

    fn page_bytes(&self) -> usize {
        self.client.page_bytes(crate::validate::PAGE_BYTES)
    }

    fn page_too_large(&self, bytes: usize) {
        self.client.answer_too_large(bytes);
    }

    fn select(&self, shape: &crate::pack::Shape, tails: &[String]) -> Result<Vec<Vec<Vec<Value>>>> {
        let read = ExactRead::new(shape, tails);
        let mut out = Vec::with_capacity(tails.len());
        let per_request = (READS_PER_REQUEST / read.groups.len()).max(1);
        for chunk in tails.chunks(per_request) {
            let sqls = read.statements(chunk);
            let results = self.client.read(&sqls)?;
            out.extend(self.decode(&read, &results)?);
        }
        Ok(out)
    }

    fn surveys_and_reads(
        &self,
        shapes: &[&crate::pack::Shape],
        reads: &[(&crate::pack::Shape, &[String])],
    ) -> Result<(Vec<crate::validate::Survey>, Vec<crate::validate::Rows>)> {
        let (_, surveys, rows) = self.catalog_surveys_and_reads(&[], shapes, reads)?;
        Ok((surveys, rows))
    }

    fn catalog_surveys_and_reads(
        &self,
        catalog: &[String],
        shapes: &[&crate::pack::Shape],
        reads: &[(&crate::pack::Shape, &[String])],
    ) -> Result<crate::validate::CatalogSurveysReads> {
        if catalog.len() > CATALOG_PER_REQUEST {
            return Err(Error::Refused(format!(
                "{} catalog statements do not go along with the first read",
                catalog.len()
            )));
        }
        // Every statement, the catalog's and the surveys first, in requests of at most
        // READS_PER_REQUEST reads (the catalog's short statements go along with the first); a
        // tail's column groups stay in one request.
        let mut sqls: Vec<String> = shapes
            .iter()
            .map(|s| crate::validate::survey_sql(s, &crate::value::quote_ident(&s.table)))
            .collect();
        let plans: Vec<ExactRead> = reads.iter().map(|(s, t)| ExactRead::new(s, t)).collect();
        for (plan, (_, tails)) in plans.iter().zip(reads) {
            sqls.extend(plan.statements(tails));
        }
        // Units that stay in one request: a survey, a tail's column groups.
        let units =
            std::iter::repeat_n(1, shapes.len()).chain(plans.iter().zip(reads).flat_map(
                |(plan, (_, tails))| std::iter::repeat_n(plan.groups.len(), tails.len()),
            ));
        let mut cuts = vec![0];
        let mut at = 0;
        for n in units {
            if at > *cuts.last().expect("a cut")
                && at - cuts.last().expect("a cut") + n > READS_PER_REQUEST
            {
                cuts.push(at);
            }
            at += n;
        }
        cuts.push(sqls.len());
        // The catalog's statements lead the first request.
        let sqls: Vec<String> = catalog.iter().cloned().chain(sqls).collect();
        for cut in cuts.iter_mut().skip(1) {
            *cut += catalog.len();
        }
        let mut results = Vec::with_capacity(sqls.len());
        for pair in cuts.windows(2).filter(|p| p[1] > p[0]) {
            results.extend(self.client.read(&sqls[pair[0]..pair[1]])?);
        }
        let mut results = results.into_iter();
        let catalog_rows = results
            .by_ref()
            .take(catalog.len())
            .map(|result| {
                result
                    .rows
                    .into_iter()
                    .map(|row| row.into_iter().map(json_value).collect())
                    .collect()
            })
            .collect();
        let surveys = results
            .by_ref()
            .take(shapes.len())
            .map(|result| {
                let row = result.rows.first();
                let cell = |i: usize| row.and_then(|r| r.get(i));
                crate::validate::survey_of(
                    cell(0).and_then(|v| v.as_u64()),
                    cell(1).and_then(|v| v.as_f64()),
                )
            })
            .collect();
        let rest: Vec<crate::d1::RawResult> = results.collect();
        let mut out = Vec::with_capacity(reads.len());
        let mut from = 0;
        for (plan, (_, tails)) in plans.iter().zip(reads) {
            let n = tails.len() * plan.groups.len();
            out.push(self.decode(plan, &rest[from..from + n])?);
            from += n;
        }
        Ok((catalog_rows, surveys, out))
    }
}

/// The statements of exact reads of one shape: a head per column group (one group unless the
/// table is too wide for one statement), each followed by a tail.
struct ExactRead<'s> {
    shape: &'s crate::pack::Shape,
    groups: Vec<Vec<usize>>,
    heads: Vec<String>,
}

impl<'s> ExactRead<'s> {
    fn new(shape: &'s crate::pack::Shape, tails: &[String]) -> ExactRead<'s> {
        let table = crate::value::quote_ident(&shape.table);
        let longest_tail = tails.iter().map(String::len).max().unwrap_or(0);
        let groups = column_groups(shape, READ_BYTES.saturating_sub(longest_tail + table.len()));
        let heads = groups
            .iter()
            .map(|g| {
                let list: Vec<String> = g
                    .iter()
                    .map(|&i| exact_select(&shape.columns[i], shape.affinities[i]))
                    .collect();
                format!("SELECT {} FROM {table}", list.join(", "))
            })
            .collect();
        ExactRead {
            shape,
            groups,
            heads,
        }
    }

    /// Each tail's statements, one per column group.
    fn statements(&self, tails: &[String]) -> Vec<String> {
        tails
            .iter()
            .flat_map(|t| self.heads.iter().map(move |h| format!("{h} {t}")))
            .collect()
    }
}

impl D1Side<'_> {
    /// The rows of each tail, from its statements' results (one per column group), joined by
    /// key when the columns were read in groups; large values are read piece by piece.
    fn decode(
        &self,
        read: &ExactRead<'_>,
        results: &[crate::d1::RawResult],
    ) -> Result<Vec<Vec<Vec<Value>>>> {
        let (shape, groups) = (read.shape, &read.groups);
        let mut out = Vec::new();
        for parts in results.chunks(groups.len()) {
            let mut rows: Vec<Vec<Value>> = Vec::new();
            let mut large = Vec::new();
            let mut at: HashMap<Vec<u8>, usize> = HashMap::new();
            for (g, (result, columns)) in parts.iter().zip(groups).enumerate() {
                for raw in &result.rows {
                    let mut cells = Vec::with_capacity(columns.len());
                    for (cell, &i) in raw.iter().zip(columns) {
                        let context =
                            || format!("table {}, column {}", shape.table, shape.columns[i]);
                        cells.push((
                            i,
                            decode_cell(cell, shape.affinities[i], &context)?,
                            is_placeholder(cell),
                        ));
                    }
                    let r = if groups.len() == 1 {
                        rows.push(vec![Value::Null; shape.columns.len()]);
                        rows.len() - 1
                    } else {
                        let mut key = Vec::new();
                        for &p in &shape.key_positions {
                            if let Some((_, v, _)) = cells.iter().find(|c| c.0 == p) {
                                v.write_canonical(&mut key);
                            }
                        }
                        if g == 0 {
                            rows.push(vec![Value::Null; shape.columns.len()]);
                            at.insert(key, rows.len() - 1);
                            rows.len() - 1
                        } else {
                            *at.get(&key).ok_or_else(|| {
                                Error::Refused(format!(
                                    "table {}: a row changed on D1 while its columns were read in groups",
                                    shape.table
                                ))
                            })?
                        }
                    };
                    for (i, v, placeholder) in cells {
                        if placeholder {
                            large.push((r, i));
                        }
                        rows[r][i] = v;
                    }
                }
            }
            for (r, c) in large {
                self.read_large(shape, &mut rows[r], c)?;
            }
            out.push(rows);
        }
        Ok(out)
    }
}

/// Bytes of SQL an exact read may take before its tail (D1 takes 100,000 per statement).
const READ_BYTES: usize = 96_000;

/// Columns one exact read selects at most (every column's exact read is a CASE of a few dozen
/// operations; D1 compiles a statement to at most 25,000).
const READ_COLUMNS: usize = 64;

/// The columns of `shape` split into groups whose exact reads each fit `budget` bytes of select
/// list, every group led by the key columns (to join the groups' rows by key). One group holds
/// every column whenever they fit.
pub fn column_groups(shape: &crate::pack::Shape, budget: usize) -> Vec<Vec<usize>> {
    let cost = |i: usize| exact_select(&shape.columns[i], shape.affinities[i]).len() + 2;
    let all: usize = (0..shape.columns.len()).map(cost).sum();
    if all <= budget && shape.columns.len() <= READ_COLUMNS {
        return vec![(0..shape.columns.len()).collect()];
    }
    let keys = &shape.key_positions;
    let key_cost: usize = keys.iter().map(|&k| cost(k)).sum();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = keys.clone();
    let mut bytes = key_cost;
    for i in (0..shape.columns.len()).filter(|i| !keys.contains(i)) {
        let c = cost(i);
        if current.len() > keys.len() && (bytes + c > budget || current.len() >= READ_COLUMNS) {
            groups.push(std::mem::replace(&mut current, keys.clone()));
            bytes = key_cost;
        }
        current.push(i);
        bytes += c;
    }
    if current.len() > keys.len() || groups.is_empty() {
        groups.push(current);
    }
    groups
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

    #[test]
    fn bare_cells_decode_by_affinity_and_tagged_cells_by_tag() {
        let decode =
            |json: &str, a| decode_cell(&serde_json::from_str(json).unwrap(), a, &String::new);
        assert_eq!(decode("14", Affinity::Integer).unwrap(), Value::Integer(14));
        assert_eq!(decode("0.5", Affinity::Numeric).unwrap(), Value::Real(0.5));
        assert_eq!(decode("14", Affinity::Real).unwrap(), Value::Real(14.0));
        assert_eq!(decode("1e-7", Affinity::Blob).unwrap(), Value::Real(1e-7));
        assert_eq!(
            decode("\"a b\"", Affinity::Text).unwrap(),
            Value::Text(b"a b".to_vec())
        );
        assert_eq!(
            decode("\"\\u0001i9007199254740993\"", Affinity::Real).unwrap(),
            Value::Integer(9007199254740993)
        );
        assert_eq!(
            decode("\"\\u0001t00ff\"", Affinity::Integer).unwrap(),
            Value::Text(vec![0, 255])
        );
        assert_eq!(
            decode("\"\\u0001b#7\"", Affinity::Text).unwrap(),
            Value::Blob(vec![0; 7])
        );
        assert_eq!(decode("null", Affinity::Text).unwrap(), Value::Null);
        // A bare value where the affinity allows none is refused, not guessed.
        assert!(decode("\"abc\"", Affinity::Integer).is_err());
        assert!(decode("3", Affinity::Text).is_err());
    }
}
