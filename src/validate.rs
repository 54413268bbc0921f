//! Validation: proves that source and target hold the same data, and names the rows that differ.
//!
//! Works over two [`RowSide`]s (SQLite file, D1 database), so it serves both directions. Per
//! table: row counts; a sample of rows chosen across the whole key range, reproducible from a seed,
//! compared by blake3 hashes of their canonical encoding; and on request a full comparison that
//! walks the source in key pages, hashes the same key range on both sides (on the client: D1 has
//! no hash function), and only where the hashes differ matches rows key by key. Memory is one page
//! per side, whatever the table size. Also compares columns and indexes.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::discover::{Schema, Table, TableKind};
use crate::error::{Error, Result};
use crate::fit::{keeps_values, MIGRATIONS_TABLE};
use crate::flow::Permits;
use crate::pack::Shape;
use crate::value::Value;

/// Rows of each tail of a read.
pub type Rows = Vec<Vec<Vec<Value>>>;

/// What [`RowSide::catalog_surveys_and_reads`] answers: each catalog statement's rows, then
/// what [`RowSide::surveys_and_reads`] answers.
pub type CatalogSurveysReads = (Vec<Vec<Vec<Value>>>, Vec<Survey>, Vec<Rows>);

/// One side of a comparison: reads rows exactly, in key order.
pub trait RowSide: Sync {
    fn label(&self) -> &'static str;
    fn count(&self, table: &str) -> Result<u64>;
    /// Each table's rows and the bytes of its rows (see [`survey_sql`]), in as few round trips
    /// as the side can.
    fn surveys(&self, shapes: &[&Shape]) -> Result<Vec<Survey>>;
    /// For each tail (`WHERE ... ORDER BY ... LIMIT ...`), the rows of `shape` it selects.
    fn select(&self, shape: &Shape, tails: &[String]) -> Result<Vec<Vec<Vec<Value>>>>;
    /// Bytes of values a page read from this side may hold: [`PAGE_BYTES`], or less once the
    /// side found an answer too large.
    fn page_bytes(&self) -> usize {
        PAGE_BYTES
    }
    /// A read of a page of about `bytes` of values failed as too large for this side to answer
    /// ([`Error::is_too_large`]): pages hold less from now on.
    fn page_too_large(&self, _bytes: usize) {}
    /// Whether a read costs this side no round trip (a file on this machine): a full walk then
    /// asks it where a page ends before the other side is asked for the page's rows, and reads
    /// its rows once those are in (see [`Walker::walk`]).
    fn local(&self) -> bool {
        false
    }
    /// [`RowSide::surveys`] of `shapes` and [`RowSide::select`] of each read, together: a side
    /// across a network answers them in as few round trips as fit (one, for a small database).
    fn surveys_and_reads(
        &self,
        shapes: &[&Shape],
        reads: &[(&Shape, &[String])],
    ) -> Result<(Vec<Survey>, Vec<Rows>)> {
        let surveys = self.surveys(shapes)?;
        let rows = reads
            .iter()
            .map(|(shape, tails)| self.select(shape, tails))
            .collect::<Result<_>>()?;
        Ok((surveys, rows))
    }

    /// [`RowSide::select`] of `tail` once for each of `values`, `?1` in it standing for the
    /// value: a side that can prepares the statement once. The rows are those of the tail with
    /// the value written in.
    fn select_each(&self, shape: &Shape, tail: &str, values: &[i64]) -> Result<Rows> {
        let tails: Vec<String> = values
            .iter()
            .map(|v| tail.replace("?1", &v.to_string()))
            .collect();
        self.select(shape, &tails)
    }

    /// The row of `shape` at each of `ranks` (0 the first, ascending) in the order `order`
    /// (unique keys), as `ORDER BY order LIMIT 1 OFFSET rank` selects it: a side that can walks
    /// the rows once instead of skipping `rank` rows for each.
    fn at_ranks(&self, shape: &Shape, order: &str, ranks: &[u64]) -> Result<Rows> {
        self.select_each(
            shape,
            &format!("ORDER BY {order} LIMIT 1 OFFSET ?1"),
            &ranks.iter().map(|&r| r as i64).collect::<Vec<_>>(),
        )
    }

    /// [`RowSide::surveys_and_reads`] with the `catalog` statements (the side's own schema) sent
    /// ahead in its first request, and their rows: for a small database, its catalog, counts
    /// and sampled rows in one round trip. A side that cannot refuses.
    fn catalog_surveys_and_reads(
        &self,
        catalog: &[String],
        _shapes: &[&Shape],
        _reads: &[(&Shape, &[String])],
    ) -> Result<CatalogSurveysReads> {
        Err(Error::Refused(format!(
            "{} does not read its catalog along with rows ({} statements)",
            self.label(),
            catalog.len()
        )))
    }
}

/// What validation is asked to do.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub sample_size: usize,
    pub seed: u64,
    pub all_rows: bool,
    pub page: usize,
    /// How many differing keys are described in detail per table.
    pub max_examples: usize,
    /// Key segments of a large table compared at once.
    pub segments: usize,
}

/// Bytes of values one page read from either side should hold, so memory stays bounded however
/// wide the rows. A page read from D1 is held about four times over while it is decoded (the
/// answer's text, its JSON tree, the values), in each of up to `MIGRATION_CONCURRENCY` segment
/// readers of `MIGRATION_PARALLEL_TABLES` tables: 2 MiB keeps a full validation of wide rows
/// under 150 MB (4 MiB reached 138 MB on the generated 1 GB database).
pub const PAGE_BYTES: usize = 2 << 20;

/// Pages read and compared at once, at most, whatever `MIGRATION_CONCURRENCY`, when the source
/// is read across a network (a page on its way from a local source holds no rows): each holds a
/// source page and a target page of [`PAGE_BYTES`] of values, about 15 MB in memory for narrow
/// rows (a value takes 32 bytes however small): eight reached 151 MB on Northwind's full
/// validation. Six still cover a 250 ms round trip (a page's answer takes D1 about 100 ms).
pub const PAGES_AT_ONCE: usize = 6;

/// A table's size as one side sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Survey {
    pub rows: u64,
    /// Bytes of values in an average row of the first few (as [`next_page_rows`] counts them).
    pub row_bytes: Option<usize>,
}

impl Survey {
    /// Rows of a first page: [`PAGE_BYTES`] of rows as wide as the survey found, at most `max`.
    pub fn first_page_rows(&self, max: usize) -> usize {
        self.page_rows(max, PAGE_BYTES)
    }

    /// Rows of a page of `budget` bytes of rows as wide as the survey found, at most `max`.
    pub fn page_rows(&self, max: usize, budget: usize) -> usize {
        match self.row_bytes {
            Some(b) if b > 0 => (budget / b).clamp(1, max),
            _ => 100.min(max),
        }
    }
}

/// Rows surveyed for their width.
const SURVEYED: usize = 100;

/// `SELECT count(*), <average bytes of the first rows>` of a table read `FROM from` (the table,
/// or a transform's subquery): one statement, so a remote side answers every table's in one
/// request. Bytes count as [`Value::size`] + 8 per value, as
/// [`next_page_rows`] does; the sum is a balanced tree (D1 allows expressions 100 deep).
pub fn survey_sql(shape: &Shape, from: &str) -> String {
    fn sum(terms: &[String]) -> String {
        match terms {
            [] => "0".into(),
            [one] => one.clone(),
            _ => {
                let (a, b) = terms.split_at(terms.len() / 2);
                format!("({} + {})", sum(a), sum(b))
            }
        }
    }
    let terms: Vec<String> = shape
        .columns
        .iter()
        .map(|c| {
            format!(
                "(CASE typeof({c}) WHEN 'text' THEN length(CAST({c} AS BLOB)) \
                 WHEN 'blob' THEN length({c}) WHEN 'null' THEN 1 ELSE 8 END + 8)"
            )
        })
        .collect();
    format!(
        "SELECT count(*), (SELECT avg(w) FROM (SELECT {} AS w FROM {from} LIMIT {SURVEYED})) FROM {from}",
        sum(&terms)
    )
}

/// Reads a survey's row: a count, and an average width or NULL.
pub fn survey_of(count: Option<u64>, width: Option<f64>) -> Survey {
    Survey {
        rows: count.unwrap_or(0),
        row_bytes: width.map(|w| w.ceil().max(1.0) as usize),
    }
}

/// The number of rows for the next page, from the width of the rows of the last one.
pub fn next_page_rows(last: &[Vec<Value>], max: usize) -> usize {
    page_rows_after(last, max, PAGE_BYTES)
}

/// Bytes of values in an average row of `rows` (as [`next_page_rows`] counts them), if any.
pub fn row_bytes(rows: &[Vec<Value>]) -> Option<usize> {
    let bytes: usize = rows.iter().flatten().map(|v| v.size() + 8).sum();
    (bytes > 0 && !rows.is_empty()).then(|| bytes.div_ceil(rows.len()))
}

/// The number of rows for the next page of `budget` bytes, from the width of the rows of the
/// last one.
pub fn page_rows_after(last: &[Vec<Value>], max: usize, budget: usize) -> usize {
    match row_bytes(last) {
        Some(per_row) => (budget / per_row).clamp(1, max),
        None => max,
    }
}

/// After a page of `page` rows (about `per_row` bytes each, when known) was too large for
/// `side` to answer: tells the side, and returns the rows to ask for instead (half as many, or
/// fewer if the side's pages are now smaller still). `None`: a single row was too large.
pub fn smaller_page(side: &dyn RowSide, page: usize, per_row: Option<usize>) -> Option<usize> {
    if page <= 1 {
        return None;
    }
    let bytes = per_row.map_or(side.page_bytes(), |b| b.saturating_mul(page));
    side.page_too_large(bytes);
    let fit = per_row.map_or(page, |b| (side.page_bytes() / b).max(1));
    Some((page / 2).min(fit).max(1))
}

/// How many key segments to cut a table of `rows` rows into, read in pages of `page` rows, at
/// most `most`: segments of whole pages (a page's worth being a fiftieth short of one, for keys
/// a little denser in places), so that a segment's last page is nearly full and the cut costs
/// few requests more than one chain of pages would; one for a table of one page.
pub fn page_segments(rows: u64, page: usize, most: usize) -> usize {
    let page = (page as u64 * 49 / 50).max(1);
    let pages = rows.div_ceil(page).max(1);
    let per_segment = pages.div_ceil(most.max(1) as u64);
    pages.div_ceil(per_segment) as usize
}

/// Splits the integer keys `lo..=hi` into `n` ranges, each `(after, upto)`: keys greater than
/// `after` (none: from the start) and at most `upto` (none: to the end).
pub fn key_segments(lo: i64, hi: i64, n: usize) -> Vec<(Option<i64>, Option<i64>)> {
    let n = n.max(1) as i128;
    let (lo, hi) = (lo as i128, hi as i128);
    let span = hi - lo;
    if span < n {
        return vec![(None, None)];
    }
    let cut = |i: i128| (lo + span * i / n) as i64;
    (0..n)
        .map(|i| {
            let after = (i > 0).then(|| cut(i));
            let upto = (i < n - 1).then(|| cut(i + 1));
            (after, upto)
        })
        .collect()
}

/// A key range `(after, upto)` as SQL key tuples: keys greater than `after` (none: from the
/// start) and at most `upto` (none: to the end).
pub type KeyRange = (Option<String>, Option<String>);

/// One page of a full walk: the source's rows of a key range, the target's rows of the same
/// range, and whether the two pages hash alike. A page of rows only the target holds (beyond the
/// source's last key) has an empty `source`; a range's last page read ahead may hold such rows
/// after the source's.
pub struct Page<'a> {
    pub source: &'a [Vec<Value>],
    pub target: &'a [Vec<Value>],
    pub equal: bool,
}

/// Walks two sides of one table page by page in key order: full validation's comparison and
/// sync's difference engine. The source is read in pages sized by the width of its rows, the
/// same key range is read from the target, and both pages are hashed on the client (D1 has no
/// hash function); whoever walks decides what to do with a page whose hashes differ.
pub struct Walker<'a> {
    pub source: &'a dyn RowSide,
    pub target: &'a dyn RowSide,
    pub shape: &'a Shape,
    /// Rows of one page, at most.
    pub page: usize,
    /// Key segments walked at once for a large table.
    pub segments: usize,
    /// One integer key (rowid tables and virtual tables): large tables split into segments.
    pub integer_key: bool,
    /// Rows of the first page of a range (later pages are sized by the rows of the last).
    pub first_page: usize,
    /// Bytes of an average row, as the survey found them (for the size of a first page once
    /// pages are smaller than [`PAGE_BYTES`]).
    pub row_bytes: Option<usize>,
    /// Pages read and compared at once across every walker sharing them: memory stays bounded
    /// while the reads of several tables overlap each other's round trips.
    pub permits: Option<&'a Permits>,
}

impl<'a> Walker<'a> {
    pub fn new(
        source: &'a dyn RowSide,
        target: &'a dyn RowSide,
        table: &Table,
        shape: &'a Shape,
        options: Options,
    ) -> Walker<'a> {
        Walker {
            source,
            target,
            shape,
            page: options.page,
            segments: options.segments,
            integer_key: matches!(
                table.kind,
                TableKind::Rowid { .. } | TableKind::Virtual { .. }
            ),
            first_page: 100.min(options.page),
            row_bytes: None,
            permits: None,
        }
    }

    /// First pages sized by `survey`'s row width, not 100 rows: a small table in one round trip.
    pub fn sized(mut self, survey: &Survey) -> Walker<'a> {
        self.first_page = survey.first_page_rows(self.page);
        self.row_bytes = survey.row_bytes;
        self
    }

    /// Pages are read and compared only while holding one of `permits`.
    pub fn sharing(mut self, permits: &'a Permits) -> Walker<'a> {
        self.permits = Some(permits);
        self
    }

    fn keys_sql(&self) -> String {
        self.shape.key_exprs.join(", ")
    }

    /// The row's key as a SQL tuple.
    pub fn key_tuple(&self, row: &[Value]) -> String {
        let parts: Vec<String> = self
            .shape
            .key_positions
            .iter()
            .map(|&p| row[p].literal())
            .collect();
        format!("({})", parts.join(", "))
    }

    /// The smallest and largest integer key of the source.
    pub fn key_range(&self) -> Result<(i64, i64)> {
        let keys = self.keys_sql();
        let ends = self.source.select(
            self.shape,
            &[
                format!("ORDER BY {keys} LIMIT 1"),
                format!("ORDER BY {keys} DESC LIMIT 1"),
            ],
        )?;
        let key =
            |rows: &Vec<Vec<Value>>| match rows.first().map(|r| &r[self.shape.key_positions[0]]) {
                Some(Value::Integer(i)) => *i,
                _ => 0,
            };
        Ok((key(&ends[0]), key(&ends[1])))
    }

    /// The whole table as key ranges walked at once: large tables in key segments (D1 answers
    /// reads in parallel), others whole.
    pub fn ranges(&self, source_rows: u64) -> Result<Vec<KeyRange>> {
        if self.integer_key && source_rows as usize > 2 * self.page {
            let (lo, hi) = self.key_range()?;
            Ok(key_segments(lo, hi, self.segments)
                .into_iter()
                .map(|(after, upto)| {
                    (
                        after.map(|k| format!("({k})")),
                        upto.map(|k| format!("({k})")),
                    )
                })
                .collect())
        } else {
            Ok(vec![(None, None)])
        }
    }

    /// Walks `ranges`, several at once, each with its own accumulator from `init`; `each` sees
    /// every page. Returns the accumulators in the order of `ranges`.
    pub fn walk_all<A: Send>(
        &self,
        ranges: &[KeyRange],
        init: impl Fn() -> A + Sync,
        each: impl Fn(&mut A, Page) -> Result<()> + Sync,
    ) -> Result<Vec<A>> {
        let run = |range: &KeyRange| {
            let mut acc = init();
            self.walk(range, &mut |page| each(&mut acc, page))
                .map(|()| acc)
        };
        if ranges.len() == 1 {
            return Ok(vec![run(&ranges[0])?]);
        }
        std::thread::scope(|scope| {
            let handles: Vec<_> = ranges
                .iter()
                .map(|range| scope.spawn(move || run(range)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a segment reader"))
                .collect()
        })
    }

    /// Walks the rows with keys in `range`: source pages in key order, the same key range read
    /// from the target; then what the target holds beyond the source's last key in the range.
    ///
    /// A walker sharing permits reads ahead, each page under a permit (a walker never waits for
    /// a permit while holding one, so walkers cannot hold each other up), and pages are handed
    /// to `each` in key order. A source whose reads cost no round trip ([`RowSide::local`]) is
    /// asked only where a page ends (its last key) before the target is asked for the page's
    /// rows, and its rows are read once the target's are in: a page on its way holds no rows,
    /// and up to [`READ_AHEAD`] pages of one walker are on their way at once. Otherwise the
    /// source's page is read first, and one page is read ahead (two on their way).
    pub fn walk(&self, range: &KeyRange, each: &mut dyn FnMut(Page) -> Result<()>) -> Result<()> {
        match self.permits {
            Some(permits) => self.walk_ahead(range, permits, each),
            None => self.walk_plain(range, each),
        }
    }

    /// Bytes of values a page may hold now, on both sides.
    fn budget(&self) -> usize {
        self.source.page_bytes().min(self.target.page_bytes())
    }

    /// Rows of the first page: as many as `per_row` fit the budget, at most the first page's.
    fn first_rows(&self, per_row: Option<usize>) -> usize {
        match per_row {
            Some(b) => (self.budget() / b).clamp(1, self.first_page),
            None => self.first_page,
        }
    }

    /// [`Walker::walk`] reading ahead.
    fn walk_ahead(
        &self,
        range: &KeyRange,
        permits: &Permits,
        each: &mut dyn FnMut(Page) -> Result<()>,
    ) -> Result<()> {
        let keys = self.keys_sql();
        let (mut after, upto) = range.clone();
        let mut per_row = self.row_bytes;
        let mut page = self.first_rows(per_row);
        let local = self.source.local();
        let depth = if local { READ_AHEAD } else { 2 };
        std::thread::scope(|scope| -> Result<()> {
            // Pages read ahead, oldest first, the target's rows of each under way.
            let mut pending: std::collections::VecDeque<Ahead<'_, '_>> = Default::default();
            loop {
                // A permit for the next page: while pages are under way, only one free now
                // (the oldest page is compared meanwhile); with none, waiting for one.
                let permit = loop {
                    if pending.len() < depth {
                        if let Some(p) = permits.try_take() {
                            break p;
                        }
                    }
                    match pending.pop_front() {
                        Some(oldest) => {
                            if let (Some(b), _) = self.finish_ahead(oldest, each)? {
                                per_row = Some(b);
                                page = (self.budget() / b).clamp(1, self.page);
                            }
                        }
                        None => break permits.take(),
                    }
                };
                let here = key_bounds(&keys, &after, &upto);
                // The page's last key, and whether it is the range's last page; a source read
                // first, its rows.
                let found = if local {
                    self.page_end(&here, page)?
                        .map(|(upper, last)| (upper, last, None))
                } else {
                    let tail = format!("{here} ORDER BY {keys} LIMIT {page}");
                    match self.source.select(self.shape, std::slice::from_ref(&tail)) {
                        Ok(mut rows) => {
                            let rows = rows.pop().unwrap_or_default();
                            rows.last()
                                .map(|last| self.key_tuple(last))
                                .map(|upper| (upper, false, Some(rows)))
                        }
                        Err(e) if e.is_too_large() => {
                            page = smaller_page(self.source, page, per_row).ok_or(e)?;
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                };
                let Some((upper, last, source_rows)) = found else {
                    drop(permit);
                    while let Some(oldest) = pending.pop_front() {
                        self.finish_ahead(oldest, each)?;
                    }
                    return self.extra(after, &upto, page, per_row, each);
                };
                // The range's last page also asks, in the same request, for what the target
                // holds beyond it in the range (a page of it): no round trip after it for that.
                let mut reads = vec![format!(
                    "{} ORDER BY {keys}",
                    key_bounds(&keys, &after, &Some(upper.clone()))
                )];
                let rest = last.then(|| {
                    reads.push(format!(
                        "{} ORDER BY {keys} LIMIT {page}",
                        key_bounds(&keys, &Some(upper.clone()), &upto)
                    ));
                    Rest {
                        upto: upto.clone(),
                        limit: page,
                    }
                });
                let target = scope.spawn(move || self.target.select(self.shape, &reads));
                if let Some(rows) = &source_rows {
                    per_row = row_bytes(rows).or(per_row);
                    page = page_rows_after(rows, self.page, self.budget());
                }
                pending.push_back(Ahead {
                    _permit: permit,
                    after: after.clone(),
                    upper: upper.clone(),
                    source_rows,
                    target,
                    rest,
                });
                after = Some(upper);
                if last {
                    let mut more = None;
                    while let Some(oldest) = pending.pop_front() {
                        more = self.finish_ahead(oldest, each)?.1;
                    }
                    // The target held a full page beyond the source's last key: the rest.
                    return match more {
                        Some(key) => self.extra(Some(key), &upto, page, per_row, each),
                        None => Ok(()),
                    };
                }
            }
        })
    }

    /// The key (a SQL tuple) of the last row of a page of `rows` rows of the source within
    /// `bounds` (a `WHERE`, or nothing), read without the rows, and whether it is the last row
    /// there (a page of fewer rows); none when it holds no row.
    fn page_end(&self, bounds: &str, rows: usize) -> Result<Option<(String, bool)>> {
        let keys = self.keys_sql();
        let shape = key_shape(self.shape);
        let tuple = |found: Vec<Vec<Vec<Value>>>| {
            found.into_iter().flatten().next().map(|key| {
                let parts: Vec<String> = key.iter().map(Value::literal).collect();
                format!("({})", parts.join(", "))
            })
        };
        let at = format!(
            "{bounds} ORDER BY {keys} LIMIT 1 OFFSET {}",
            rows.max(1) - 1
        );
        if let Some(upper) = tuple(self.source.select(&shape, &[at])?) {
            return Ok(Some((upper, false)));
        }
        // Fewer rows than a page: the last of them.
        let down: Vec<String> = self
            .shape
            .key_exprs
            .iter()
            .map(|k| format!("{k} DESC"))
            .collect();
        let last = format!("{bounds} ORDER BY {} LIMIT 1", down.join(", "));
        Ok(tuple(self.source.select(&shape, &[last])?).map(|upper| (upper, true)))
    }

    /// Compares a page read ahead once the target's rows of it are in (the source's read now,
    /// when they were not read first), and returns the bytes of an average source row of it,
    /// and, for a range's last page whose target held a full page beyond it, the key of the
    /// last row read there (the rest follows it). A page the target found too large to answer
    /// is walked again in smaller pages (a range's last page, with the rest of the range).
    fn finish_ahead(
        &self,
        ahead: Ahead<'_, '_>,
        each: &mut dyn FnMut(Page) -> Result<()>,
    ) -> Result<(Option<usize>, Option<String>)> {
        let Ahead {
            _permit,
            after,
            upper,
            source_rows,
            target,
            rest,
        } = ahead;
        let target_rows = target.join().expect("a target read");
        let keys = self.keys_sql();
        let source_rows = match source_rows {
            Some(rows) => rows,
            None => {
                let tail = format!(
                    "{} ORDER BY {keys}",
                    key_bounds(&keys, &after, &Some(upper.clone()))
                );
                self.source
                    .select(self.shape, &[tail])?
                    .pop()
                    .unwrap_or_default()
            }
        };
        let per_row = row_bytes(&source_rows);
        let mut more = None;
        match target_rows {
            Ok(parts) => {
                if let (Some(rest), Some(beyond)) = (&rest, parts.get(1)) {
                    if beyond.len() >= rest.limit {
                        more = beyond.last().map(|row| self.key_tuple(row));
                    }
                }
                let target_rows: Vec<Vec<Value>> = parts.into_iter().flatten().collect();
                each(Page {
                    source: &source_rows,
                    target: &target_rows,
                    equal: page_hash(&source_rows) == page_hash(&target_rows),
                })?
            }
            Err(e) if e.is_too_large() => {
                let smaller = smaller_page(self.target, source_rows.len(), per_row).ok_or(e)?;
                drop(source_rows);
                let again = Walker {
                    first_page: smaller,
                    row_bytes: None,
                    permits: None,
                    ..*self
                };
                let upto = match rest {
                    Some(rest) => rest.upto,
                    None => Some(upper),
                };
                again.walk_plain(&(after, upto), each)?;
            }
            Err(e) => return Err(e),
        }
        Ok((per_row, more))
    }

    /// [`Walker::walk`] one page after the other.
    fn walk_plain(&self, range: &KeyRange, each: &mut dyn FnMut(Page) -> Result<()>) -> Result<()> {
        let keys = self.keys_sql();
        let (mut after, upto) = range.clone();
        let mut per_row = self.row_bytes;
        let mut page = self.first_rows(per_row);
        loop {
            let tail = format!(
                "{} ORDER BY {keys} LIMIT {page}",
                key_bounds(&keys, &after, &upto)
            );
            let source_rows = match self.source.select(self.shape, std::slice::from_ref(&tail)) {
                Ok(mut rows) => rows.pop().unwrap_or_default(),
                Err(e) => {
                    page = shrink(self.source, e, page, per_row)?;
                    continue;
                }
            };
            let Some(last) = source_rows.last() else {
                return self.extra(after, &upto, page, per_row, each);
            };
            let upper = self.key_tuple(last);
            let range = key_bounds(&keys, &after, &Some(upper.clone()));
            let target_rows = match self
                .target
                .select(self.shape, &[format!("{range} ORDER BY {keys}")])
            {
                Ok(mut rows) => rows.pop().unwrap_or_default(),
                Err(e) => {
                    // The source's page again, smaller, and the target's rows of its range.
                    page = shrink(self.target, e, page, row_bytes(&source_rows).or(per_row))?;
                    continue;
                }
            };
            each(Page {
                source: &source_rows,
                target: &target_rows,
                equal: page_hash(&source_rows) == page_hash(&target_rows),
            })?;
            per_row = row_bytes(&source_rows).or(per_row);
            page = page_rows_after(&source_rows, self.page, self.budget());
            after = Some(upper);
        }
    }

    /// What the target holds after the source's last key `after` in the range (up to `upto`):
    /// rows only the target holds, handed to `each` as extra, in pages of `page` rows at first.
    fn extra(
        &self,
        mut after: Option<String>,
        upto: &Option<String>,
        mut page: usize,
        mut per_row: Option<usize>,
        each: &mut dyn FnMut(Page) -> Result<()>,
    ) -> Result<()> {
        let keys = self.keys_sql();
        loop {
            let tail = format!(
                "{} ORDER BY {keys} LIMIT {page}",
                key_bounds(&keys, &after, upto)
            );
            let extra = match self.target.select(self.shape, &[tail]) {
                Ok(mut rows) => rows.pop().unwrap_or_default(),
                Err(e) => {
                    page = shrink(self.target, e, page, per_row)?;
                    continue;
                }
            };
            let Some(last) = extra.last() else {
                return Ok(());
            };
            after = Some(self.key_tuple(last));
            each(Page {
                source: &[],
                target: &extra,
                equal: false,
            })?;
            per_row = row_bytes(&extra).or(per_row);
            page = page_rows_after(&extra, self.page, self.budget());
        }
    }
}

/// After a read of a page of `page` rows failed with `e`: when `side` found it too large to
/// answer, the rows to ask for instead (every walker's pages are smaller from then on);
/// otherwise, or for a single row, the error.
fn shrink(side: &dyn RowSide, e: Error, page: usize, per_row: Option<usize>) -> Result<usize> {
    if e.is_too_large() {
        smaller_page(side, page, per_row).ok_or(e)
    } else {
        Err(e)
    }
}

/// Pages one walker keeps on their way at once when its source is local (see
/// [`Walker::walk`]): the permits bound them across walkers.
pub const READ_AHEAD: usize = 4;

/// A page of a walk read ahead: its permit, its key range, the source's rows (when they were
/// read first), and the target's read of the same range under way (for a range's last page,
/// with what the target holds beyond it).
struct Ahead<'scope, 'env> {
    _permit: crate::flow::Permit<'env>,
    after: Option<String>,
    upper: String,
    source_rows: Option<Vec<Vec<Value>>>,
    target: std::thread::ScopedJoinHandle<'scope, Result<Rows>>,
    rest: Option<Rest>,
}

/// What a range's last page also read of the target: rows after its last key up to `upto`
/// (the range's end), at most `limit` of them.
struct Rest {
    upto: Option<String>,
    limit: usize,
}

/// The shape of `shape`'s key columns alone.
fn key_shape(s: &Shape) -> Shape {
    Shape {
        table: s.table.clone(),
        columns: s
            .key_positions
            .iter()
            .map(|&p| s.columns[p].clone())
            .collect(),
        affinities: s.key_positions.iter().map(|&p| s.affinities[p]).collect(),
        key_positions: (0..s.key_positions.len()).collect(),
        key_exprs: s.key_exprs.clone(),
        deferred: Vec::new(),
        anchored: Vec::new(),
        is_virtual: s.is_virtual,
        read_from: s.read_from.clone(),
    }
}

/// Keys named in one read when rows are read back by key.
const KEYS_PER_READ: usize = 1000;

/// What a sync already compared, so that its closing validation re-reads only what it wrote:
/// every other row was found equal on both sides and left alone.
#[derive(Debug, Clone, Default)]
pub struct Recheck {
    /// Keys of the rows written (inserted, updated, deleted).
    pub keys: Vec<Vec<Value>>,
    /// Source rows found equal and not written.
    pub equal_rows: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FieldDiff {
    pub column: String,
    pub source: String,
    pub target: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Difference {
    pub key: String,
    /// "mismatch", "missing" (in the target) or "extra" (only in the target).
    pub kind: String,
    pub fields: Vec<FieldDiff>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct TableValidation {
    pub table: String,
    pub source_rows: u64,
    pub target_rows: u64,
    pub sampled: u64,
    pub compared: u64,
    pub mismatched: u64,
    pub missing: u64,
    pub extra: u64,
    pub differences: Vec<Difference>,
    pub schema_problems: Vec<String>,
    pub warnings: Vec<String>,
    pub ok: bool,
}

impl TableValidation {
    /// Adds what a part of the table's comparison found (a key segment's, or a walk's), keeping
    /// at most `examples` differences and warnings.
    fn absorb(&mut self, part: TableValidation, examples: usize) {
        self.compared += part.compared;
        self.mismatched += part.mismatched;
        self.missing += part.missing;
        self.extra += part.extra;
        for d in part.differences {
            if self.differences.len() < examples {
                self.differences.push(d);
            }
        }
        for w in part.warnings {
            if self.warnings.len() < examples {
                self.warnings.push(w);
            }
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Validation {
    pub ok: bool,
    pub full: bool,
    pub tables: Vec<TableValidation>,
    /// Indexes present on one side only.
    pub index_problems: Vec<String>,
}

impl Validation {
    /// `Err(Differences)` naming the tables that differ, when anything does.
    pub fn verdict(&self) -> Result<()> {
        if self.ok {
            return Ok(());
        }
        let differing: Vec<&str> = self
            .tables
            .iter()
            .filter(|t| !t.ok)
            .map(|t| t.table.as_str())
            .collect();
        Err(Error::Differences(if differing.is_empty() {
            "indexes differ".into()
        } else {
            format!("tables {}", differing.join(", "))
        }))
    }
}

/// Validates every table of `source_schema` (with data) against the target.
pub fn validate(
    source: &dyn RowSide,
    target: &dyn RowSide,
    source_schema: &Schema,
    target_schema: &Schema,
    options: Options,
    parallel: usize,
) -> Result<Validation> {
    validate_rechecked(
        source,
        target,
        source_schema,
        target_schema,
        options,
        parallel,
        &HashMap::new(),
    )
}

/// A full validation that, for the tables in `rechecks`, compares again only the rows a sync
/// wrote, by key; the rest of such a table was found equal by the sync's own full comparison.
/// Counts, columns and indexes are compared as always.
pub fn validate_rechecked(
    source: &dyn RowSide,
    target: &dyn RowSide,
    source_schema: &Schema,
    target_schema: &Schema,
    options: Options,
    parallel: usize,
    rechecks: &HashMap<String, Recheck>,
) -> Result<Validation> {
    validate_against(
        source,
        target,
        source_schema,
        TargetSchema::Read(target_schema),
        options,
        parallel,
        rechecks,
    )
}

/// Makes the target's schema of its catalog statements' rows.
pub type Discover<'a> = dyn Fn(Vec<Vec<Vec<Value>>>) -> Result<Schema> + Sync + 'a;

/// How validation learns the target's schema.
enum TargetSchema<'a> {
    /// Read before validation starts.
    Read(&'a Schema),
    /// Read in the target's first request, with its counts and sampled rows: the catalog's
    /// statements, and how their rows become the schema.
    Along(&'a [String], &'a Discover<'a>),
}

/// [`validate`] of a target that holds every table of the source (a forward run that has just
/// completed, or completed before): the target's catalog (`catalog`, made a schema by
/// `discover`) is read along with its counts and sampled rows, in one request for a small
/// database. A target that lacks a table or a column of the source refuses that request
/// (D1Error::Sql), and the caller validates the usual way, catalog first.
pub fn validate_along(
    source: &dyn RowSide,
    target: &dyn RowSide,
    source_schema: &Schema,
    catalog: &[String],
    discover: &Discover<'_>,
    options: Options,
    parallel: usize,
) -> Result<Validation> {
    validate_against(
        source,
        target,
        source_schema,
        TargetSchema::Along(catalog, discover),
        options,
        parallel,
        &HashMap::new(),
    )
}

fn validate_against(
    source: &dyn RowSide,
    target: &dyn RowSide,
    source_schema: &Schema,
    target_schema: TargetSchema<'_>,
    options: Options,
    parallel: usize,
    rechecks: &HashMap<String, Recheck>,
) -> Result<Validation> {
    let tables: Vec<&Table> = source_schema.tables.iter().collect();
    // Every table's rows (and the source's row widths) in one round trip per side.
    let shapes: Vec<Shape> = tables.iter().map(|t| Shape::new(t, &[])).collect();
    let sources = source.surveys(&shapes.iter().collect::<Vec<_>>())?;
    // The target's tables, as read or (along) as the source's.
    let on_target = |name: &str| match &target_schema {
        TargetSchema::Read(schema) => schema.table(name),
        TargetSchema::Along(..) => source_schema.table(name),
    };
    let present: Vec<Shape> = tables
        .iter()
        .filter_map(|t| on_target(&t.name))
        .map(|t| Shape::new(t, &[]))
        .collect();
    // Pages read and compared at once, across every table and key segment. Pages on their way
    // from a local source hold no rows until the target's are in (see `Walker::walk`): more of
    // them, as many as a rollback's readers, cover the round trip.
    let permits = Permits::new(if source.local() {
        options.segments + parallel
    } else {
        options.segments.min(PAGES_AT_ONCE)
    });
    // The largest tables first, so that they do not start last.
    let mut order: Vec<usize> = (0..tables.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(sources[i].rows));
    // Tables mostly wait for D1's answers: as many at once as pages may be read.
    let workers = parallel.max(options.segments).max(1);
    let comparison = |i: usize| Comparison {
        source,
        target,
        shape: &shapes[i],
        table: tables[i],
        options,
        survey: sources[i],
        permits: &permits,
    };
    // Sampled tables are planned on the source first (keys picked, the source's rows read); the
    // target's rows of every plan are read with the target's counts, in one round trip where
    // they fit, rather than a few per table.
    let plans: Vec<Option<SamplePlan>> = parallel_map(&order, workers, |i| {
        let c = comparison(i);
        let held = on_target(&tables[i].name).is_some();
        if !samples(tables[i], held, options, rechecks) || !c.prefetchable(sources[i].rows) {
            return Ok(None);
        }
        c.sample_plan(sources[i].rows)
            .map(Some)
            .map_err(|e| e.in_table(&tables[i].name))
    })
    .into_iter()
    .collect::<Result<_>>()?;
    let reads: Vec<(&Shape, &[String])> = plans
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.as_ref().map(|p| (&shapes[i], p.tails.as_slice())))
        .collect();
    let present_shapes: Vec<&Shape> = present.iter().collect();
    // A full validation along the target's catalog: every table's walk starts at once, beside
    // the target's first request (the source's pages end where its own keys say, and the target
    // is read with the source's shapes): the first pages do not wait a round trip for the
    // catalog. A target that lacks a table or a column refuses that request (and such a
    // table's reads): the walks stop at their next page, and the catalog's error is returned,
    // as before.
    let early = matches!(target_schema, TargetSchema::Along(..)) && options.all_rows;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (first, walked) = std::thread::scope(|scope| {
        let first = scope.spawn(|| {
            let first = read_target_first(target, target_schema, &present_shapes, &reads);
            if first.is_err() {
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            first
        });
        let walked: Vec<Option<Result<TableValidation>>> = if early {
            parallel_map(&order, workers, |i| {
                if merged_by_name(tables[i]) {
                    return None;
                }
                let walk = comparison(i).full_until(sources[i].rows, &stop);
                if walk.is_err() {
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                Some(walk.map_err(|e| e.in_table(&tables[i].name)))
            })
        } else {
            tables.iter().map(|_| None).collect()
        };
        (first.join().expect("the target's first read"), walked)
    });
    let (target_schema, target_surveys, mut read, keep_plans) = first?;
    // The first genuine error of a walk (not one stopped by another's).
    let mut walked: Vec<Option<TableValidation>> = walked
        .into_iter()
        .map(|w| match w {
            Some(Err(e)) if !stopped(&e) => Err(e),
            Some(Err(_)) | None => Ok(None),
            Some(Ok(v)) => Ok(Some(v)),
        })
        .collect::<Result<_>>()?;
    let plans: Vec<Option<SamplePlan>> = if keep_plans {
        plans
    } else {
        plans.into_iter().map(|_| None).collect()
    };
    let target_schema: &Schema = &target_schema;
    let targets: HashMap<String, u64> = present
        .iter()
        .map(|s| s.table.to_lowercase())
        .zip(target_surveys)
        .map(|(name, survey)| (name, survey.rows))
        .collect();
    let prefetched: Vec<std::sync::Mutex<Option<(SamplePlan, Rows)>>> = plans
        .into_iter()
        .rev()
        .map(|p| std::sync::Mutex::new(p.map(|p| (p, read.pop().unwrap_or_default()))))
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let walked: Vec<std::sync::Mutex<Option<TableValidation>>> =
        walked.drain(..).map(std::sync::Mutex::new).collect();
    let results: Vec<Result<TableValidation>> = parallel_map(&order, workers, |i| {
        let table = tables[i];
        let sizes = Sizes {
            source: sources[i],
            target_rows: targets
                .get(&table.name.to_lowercase())
                .copied()
                .unwrap_or(0),
        };
        let prefetched = prefetched[i].lock().expect("prefetched").take();
        let walked = walked[i].lock().expect("walked").take();
        validate_table(
            &comparison(i),
            target_schema,
            rechecks.get(&table.name),
            sizes,
            prefetched,
            walked,
        )
        .map_err(|e| e.in_table(&table.name))
    });
    let mut tables = results.into_iter().collect::<Result<Vec<_>>>()?;
    let (index_problems, extra_indexes) = compare_indexes(source_schema, target_schema);
    // The target's own indexes (an application's schema) are told with their table, not failed.
    for (table, index) in extra_indexes {
        if let Some(t) = tables
            .iter_mut()
            .find(|t| t.table.eq_ignore_ascii_case(&table))
        {
            t.warnings
                .push(format!("index {index:?} exists only on the target"));
        }
    }
    // The planner's statistics change no answer: a difference is told, not failed.
    for (table, warning) in compare_statistics(source_schema, target_schema) {
        if let Some(t) = tables
            .iter_mut()
            .find(|t| t.table.eq_ignore_ascii_case(&table))
        {
            t.warnings.push(warning);
        }
    }
    Ok(Validation {
        ok: tables.iter().all(|t| t.ok) && index_problems.is_empty(),
        full: options.all_rows,
        tables,
        index_problems,
    })
}

/// What [`read_target_first`] read: the target's schema, surveys and rows, and whether the rows
/// were read.
type TargetFirst<'s> = (std::borrow::Cow<'s, Schema>, Vec<Survey>, Vec<Rows>, bool);

/// The target's schema (as read before, or read now with its catalog), its surveys of `shapes`
/// and its rows of `reads`, in one request where they fit; and whether the reads were made (a
/// table read whole too large for the target to answer at once: none, each table is then
/// compared on its own).
fn read_target_first<'s>(
    target: &dyn RowSide,
    target_schema: TargetSchema<'s>,
    shapes: &[&Shape],
    reads: &[(&Shape, &[String])],
) -> Result<TargetFirst<'s>> {
    match target_schema {
        TargetSchema::Read(schema) => match target.surveys_and_reads(shapes, reads) {
            Ok((surveys, read)) => Ok((std::borrow::Cow::Borrowed(schema), surveys, read, true)),
            Err(e) if e.is_too_large() => Ok((
                std::borrow::Cow::Borrowed(schema),
                target.surveys(shapes)?,
                Vec::new(),
                false,
            )),
            Err(e) => Err(e),
        },
        TargetSchema::Along(catalog, discover) => {
            let (rows, surveys, read) = target.catalog_surveys_and_reads(catalog, shapes, reads)?;
            Ok((
                std::borrow::Cow::Owned(discover(rows)?),
                surveys,
                read,
                true,
            ))
        }
    }
}

/// What a walk started beside the target's first request returns when another walk or that
/// request failed first: it stopped at its next page.
const STOPPED: &str = "validation stopped: another read failed";

/// Whether `e` is a walk's [`STOPPED`].
fn stopped(e: &Error) -> bool {
    match e {
        Error::Refused(m) => m == STOPPED,
        Error::Table { source, .. } => stopped(source),
        _ => false,
    }
}

/// A table's size on each side, surveyed before the tables are compared.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    source: Survey,
    target_rows: u64,
}

/// Runs `f` on each of `items` (indexes), `workers` at once; results in index order.
fn parallel_map<R: Send>(items: &[usize], workers: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
    let (tx, rx) = crossbeam_channel::unbounded();
    for &i in items {
        tx.send(i).expect("queue");
    }
    drop(tx);
    let out = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..workers.min(items.len()).max(1) {
            let (rx, out, f) = (rx.clone(), &out, &f);
            scope.spawn(move || {
                for i in rx {
                    let r = f(i);
                    out.lock().expect("results").push((i, r));
                }
            });
        }
    });
    let mut out = out.into_inner().expect("results");
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

/// Whether a table is compared by a sample (not in full, not a sync's recheck, not merged by
/// name), on a target that has it.
fn samples(
    table: &Table,
    on_target: bool,
    options: Options,
    rechecks: &HashMap<String, Recheck>,
) -> bool {
    !options.all_rows && !rechecks.contains_key(&table.name) && on_target && !merged_by_name(table)
}

/// wrangler's history, merged by name: every source entry must be on the target, which may
/// have entries (and numbers) of its own.
fn merged_by_name(table: &Table) -> bool {
    table.name.eq_ignore_ascii_case(MIGRATIONS_TABLE)
        && table
            .columns
            .iter()
            .any(|c| c.name.eq_ignore_ascii_case("name"))
}

fn validate_table(
    comparison: &Comparison<'_>,
    target_schema: &Schema,
    recheck: Option<&Recheck>,
    sizes: Sizes,
    prefetched: Option<(SamplePlan, Rows)>,
    walked: Option<TableValidation>,
) -> Result<TableValidation> {
    let table = comparison.table;
    let target = comparison.target;
    let options = comparison.options;
    let mut v = TableValidation {
        table: table.name.clone(),
        ..TableValidation::default()
    };
    let Some(target_table) = target_schema.table(&table.name) else {
        v.schema_problems
            .push(format!("{} has no table {:?}", target.label(), table.name));
        return Ok(v);
    };
    v.schema_problems = compare_schema(table, target_table, target.label());
    v.source_rows = sizes.source.rows;
    v.target_rows = sizes.target_rows;
    if merged_by_name(table) {
        comparison.by_name(&mut v)?;
        v.ok = v.schema_problems.is_empty() && v.missing == 0;
        return Ok(v);
    }
    if let Some(recheck) = recheck {
        comparison.keyed(&mut v, &recheck.keys)?;
        v.compared += recheck.equal_rows;
    } else if let Some(walked) = walked {
        v.absorb(walked, options.max_examples);
    } else if options.all_rows {
        comparison.full(&mut v)?;
    } else if let Some((plan, rows)) = prefetched {
        comparison.sample_finish(&mut v, plan, rows)?;
    } else {
        comparison.sample(&mut v)?;
    }
    v.ok = v.schema_problems.is_empty()
        && v.source_rows == v.target_rows
        && v.mismatched == 0
        && v.missing == 0
        && v.extra == 0;
    Ok(v)
}

/// Columns are matched by name, case-insensitively, in any order: each of the source's stored
/// columns must be on the target with an affinity that keeps its values. The target may have
/// columns of its own (a schema the application created, with a column the source lacks).
fn compare_schema(source: &Table, target: &Table, label: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for c in source.data_columns() {
        match target
            .columns
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(&c.name))
        {
            None => problems.push(format!(
                "column {:?} ({}) is missing from the {label}",
                c.name, c.decl_type
            )),
            Some(t) if !keeps_values(c.affinity(), t.affinity()) => problems.push(format!(
                "column {:?}: source {:?}, {label} {:?}",
                c.name, c.decl_type, t.decl_type
            )),
            Some(_) => {}
        }
    }
    let same_kind = match (&source.kind, &target.kind) {
        (TableKind::Rowid { rowid_alias: a }, TableKind::Rowid { rowid_alias: b }) => {
            a.as_deref().map(str::to_lowercase) == b.as_deref().map(str::to_lowercase)
        }
        (a, b) => std::mem::discriminant(a) == std::mem::discriminant(b),
    };
    if !same_kind {
        problems.push(format!(
            "table kind differs: source {:?}, {label} {:?}",
            source.kind, target.kind
        ));
    }
    problems
}

/// Indexes that exist on one side and not the other.
/// Indexes of the source missing from the target (problems), and the target's indexes the
/// source lacks, as (table, index).
fn compare_indexes(source: &Schema, target: &Schema) -> (Vec<String>, Vec<(String, String)>) {
    let names = |s: &Schema| -> Vec<(String, String)> {
        let mut n: Vec<(String, String)> = s
            .objects
            .iter()
            .filter(|o| o.kind == "index" && source.table(&o.table).is_some())
            .map(|o| (o.name.to_lowercase(), o.table.clone()))
            .collect();
        n.sort();
        n
    };
    let (a, b) = (names(source), names(target));
    let has = |list: &[(String, String)], name: &str| list.iter().any(|(n, _)| n == name);
    let problems = a
        .iter()
        .filter(|(n, _)| !has(&b, n))
        .map(|(n, _)| format!("index {n:?} is missing from the target"))
        .collect();
    let extra = b
        .iter()
        .filter(|(n, _)| !has(&a, n))
        .map(|(n, t)| (t.clone(), n.clone()))
        .collect();
    (problems, extra)
}

/// Tables (and shadow tables) whose `sqlite_stat1` rows differ, as (the validated table, a
/// warning). The target's statistics are compared only when they were read (see `sides`).
fn compare_statistics(source: &Schema, target: &Schema) -> Vec<(String, String)> {
    let rows = |s: &Schema, tbl: &str| -> Vec<String> {
        let mut r: Vec<String> = s
            .stat1
            .iter()
            .filter(|r| r.tbl.eq_ignore_ascii_case(tbl))
            .map(|r| format!("{} {}", r.idx.literal(), r.stat.literal()))
            .collect();
        r.sort();
        r
    };
    let mut names: Vec<String> = Vec::new();
    for r in source.stat1.iter().chain(&target.stat1) {
        if !names.iter().any(|n| n.eq_ignore_ascii_case(&r.tbl)) {
            names.push(r.tbl.clone());
        }
    }
    let mut out = Vec::new();
    for tbl in names {
        let (a, b) = (rows(source, &tbl), rows(target, &tbl));
        if a == b {
            continue;
        }
        // The validated table it belongs to: itself, or the virtual table it is a shadow of.
        let lower = tbl.to_lowercase();
        let owner = source.table(&tbl).map(|t| t.name.clone()).or_else(|| {
            source
                .tables
                .iter()
                .find(|t| {
                    t.is_virtual() && lower.starts_with(&format!("{}_", t.name.to_lowercase()))
                })
                .map(|t| t.name.clone())
        });
        if let Some(owner) = owner {
            out.push((
                owner,
                format!(
                    "the planner's statistics (sqlite_stat1) of {tbl:?} differ: the source has \
                     [{}], the target [{}] (they change query plans, not answers; ANALYZE {} on \
                     the target remakes them)",
                    a.join("; "),
                    b.join("; "),
                    crate::value::quote_ident(&tbl)
                ),
            ));
        }
    }
    out
}

/// The canonical bytes of a row, and of its key.
pub fn canonical(row: &[Value]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"d1m-row-v1");
    for v in row {
        v.write_canonical(&mut out);
    }
    out
}

pub fn key_of(shape: &Shape, row: &[Value]) -> Vec<u8> {
    let key: Vec<Value> = shape
        .key_positions
        .iter()
        .map(|&p| row[p].clone())
        .collect();
    canonical(&key)
}

fn describe(v: &Value) -> String {
    let text = match v {
        Value::Text(b) => format!("text {:?}", String::from_utf8_lossy(b)),
        Value::Blob(b) => format!("blob of {} bytes ({})", b.len(), blake3::hash(b).to_hex()),
        Value::Real(r) => format!("real {r:?} (bits {:016x})", r.to_bits()),
        Value::Integer(i) => format!("integer {i}"),
        Value::Null => "null".into(),
    };
    if text.len() > 120 {
        let mut end = 120;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &text[..end])
    } else {
        text
    }
}

/// A sample planned on the source's side: the target reads it needs and the source's rows of
/// each.
struct SamplePlan {
    tails: Vec<String>,
    source_rows: Rows,
    /// The whole table (no larger than the sample): rows only the target holds count as extra.
    whole: bool,
    /// Keys picked (or, whole, the table's rows).
    sampled: u64,
}

struct Comparison<'a> {
    source: &'a dyn RowSide,
    target: &'a dyn RowSide,
    shape: &'a Shape,
    table: &'a Table,
    options: Options,
    /// The source's rows and row width, for the size of first pages.
    survey: Survey,
    permits: &'a Permits,
}

impl Comparison<'_> {
    fn keys_sql(&self) -> String {
        self.shape.key_exprs.join(", ")
    }

    fn walker(&self) -> Walker<'_> {
        Walker::new(
            self.source,
            self.target,
            self.table,
            self.shape,
            self.options,
        )
        .sized(&self.survey)
        .sharing(self.permits)
    }

    /// A table with no more rows than the sample size is compared whole; a larger one gets
    /// exactly the sample size of distinct rows spread over its key range. The same keys are then
    /// read from both sides and matched.
    fn sample(&self, v: &mut TableValidation) -> Result<()> {
        let n = self.options.sample_size;
        if n == 0 || v.source_rows == 0 {
            return Ok(());
        }
        if !self.prefetchable(v.source_rows) {
            self.full_ranges(v, &[(None, None)])?;
            v.sampled = v.compared;
            return Ok(());
        }
        let plan = self.sample_plan(v.source_rows)?;
        let target_rows = match self.target.select(self.shape, &plan.tails) {
            Ok(rows) => rows,
            // The whole table was too large for the target to answer at once: in pages.
            Err(e) if plan.whole && e.is_too_large() => {
                self.full_ranges(v, &[(None, None)])?;
                v.sampled = v.compared;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        self.sample_finish(v, plan, target_rows)
    }

    /// Whether the sample of a table of `rows` rows can be planned on the source alone and its
    /// target rows read at once: any sampled table, and a table compared whole whose rows fit
    /// one page.
    fn prefetchable(&self, rows: u64) -> bool {
        let n = self.options.sample_size as u64;
        n > 0
            && rows > 0
            && (rows > n || rows <= self.survey.first_page_rows(self.options.page) as u64)
    }

    /// The source's side of a sample of a table of `rows` rows: the keys picked (or, for a table
    /// no larger than the sample, all of them), the source's rows, and the target reads.
    fn sample_plan(&self, rows: u64) -> Result<SamplePlan> {
        let n = self.options.sample_size;
        let keys = self.keys_sql();
        if rows <= n as u64 {
            let source_rows = self
                .source
                .select(self.shape, &[format!("ORDER BY {keys}")])?;
            // More than twice the source's rows on the target: read in pages (sample_finish).
            return Ok(SamplePlan {
                tails: vec![format!("ORDER BY {keys} LIMIT {}", 2 * rows + 1)],
                source_rows,
                whole: true,
                sampled: rows,
            });
        }
        let picked = self.sample_keys(n, rows)?;
        // At most 50 keys, and 20,000 bytes of them, per read (D1 takes 100,000 per statement,
        // and the exact read's select list takes its share).
        let mut chunks: Vec<&[Vec<Value>]> = Vec::new();
        let (mut start, mut bytes) = (0, 0);
        for (i, k) in picked.iter().enumerate() {
            let len = self.key_tuple_of(k).len() + 2;
            if i > start && (i - start >= 50 || bytes + len > 20_000) {
                chunks.push(&picked[start..i]);
                (start, bytes) = (i, 0);
            }
            bytes += len;
        }
        if start < picked.len() {
            chunks.push(&picked[start..]);
        }
        let tails: Vec<String> = chunks.iter().map(|chunk| self.keys_in(chunk)).collect();
        let source_rows = self.source.select(self.shape, &tails)?;
        Ok(SamplePlan {
            tails,
            source_rows,
            whole: false,
            sampled: picked.len() as u64,
        })
    }

    /// Matches a sample's source rows with the target's rows of the same reads.
    fn sample_finish(
        &self,
        v: &mut TableValidation,
        plan: SamplePlan,
        target_rows: Rows,
    ) -> Result<()> {
        if plan.whole {
            let read = target_rows.iter().map(Vec::len).sum::<usize>() as u64;
            if v.target_rows > read {
                // The target holds more than was read: every extra row is counted by a walk.
                self.full_ranges(v, &[(None, None)])?;
                v.sampled = v.compared;
                return Ok(());
            }
        }
        for (source_rows, target_rows) in plan.source_rows.iter().zip(&target_rows) {
            self.check_json(source_rows, v);
            self.match_rows(source_rows, target_rows, plan.whole, v);
        }
        v.sampled = if plan.whole { v.compared } else { plan.sampled };
        Ok(())
    }

    /// `n` distinct keys of the source (which has `rows` > `n` rows), in key order, reproducible
    /// from the seed. The key range (or, for keys that are not one integer, the rank range) is cut
    /// into `n` strata and a key drawn in each; where gaps in the keys leave strata empty, more
    /// keys are drawn at random, and what is still missing is taken from the keys that follow a
    /// random point. Only keys are read here.
    fn sample_keys(&self, n: usize, rows: u64) -> Result<Vec<Vec<Value>>> {
        let mut rng = StdRng::seed_from_u64(self.options.seed ^ table_seed(&self.table.name));
        let keys = self.keys_sql();
        let key_shape = key_shape(self.shape);
        let mut picked: std::collections::BTreeMap<Vec<u8>, Vec<Value>> = Default::default();
        let take =
            |found: Vec<Vec<Vec<Value>>>,
             picked: &mut std::collections::BTreeMap<Vec<u8>, Vec<Value>>| {
                for row in found.into_iter().flatten() {
                    if picked.len() < n {
                        picked.entry(canonical(&row)).or_insert(row);
                    }
                }
            };
        if !self.single_integer_key() {
            // Ranks: stratum i holds ranks [i*rows/n, (i+1)*rows/n), never empty as rows > n.
            let (rows, n128) = (rows as u128, n as u128);
            let ranks: Vec<u64> = (0..n128)
                .map(|i| {
                    let (a, b) = ((i * rows / n128) as u64, ((i + 1) * rows / n128) as u64);
                    rng.random_range(a..b.max(a + 1))
                })
                .collect();
            take(
                self.source.at_ranks(&key_shape, &keys, &ranks)?,
                &mut picked,
            );
        } else {
            let (lo, hi) = self.key_range()?;
            let (lo, span) = (lo as i128, hi as i128 - lo as i128 + 1);
            // Draws fall within lo..=hi, which are i64 keys.
            let at = format!("WHERE {keys} >= ?1 ORDER BY {keys} LIMIT 1");
            let starts: Vec<i64> = (0..n as i128)
                .map(|i| {
                    let a = lo + span * i / n as i128;
                    let b = (lo + span * (i + 1) / n as i128).max(a + 1);
                    rng.random_range(a..b) as i64
                })
                .collect();
            take(
                self.source.select_each(&key_shape, &at, &starts)?,
                &mut picked,
            );
            for _ in 0..2 {
                if picked.len() >= n {
                    break;
                }
                let starts: Vec<i64> = (picked.len()..n)
                    .map(|_| rng.random_range(lo..lo + span) as i64)
                    .collect();
                take(
                    self.source.select_each(&key_shape, &at, &starts)?,
                    &mut picked,
                );
            }
        }
        if picked.len() < n {
            // The keys following a random point, then the first keys: together at least `n`
            // distinct keys, so at least the missing number of new ones.
            let mut tails = vec![format!("ORDER BY {keys} LIMIT {n}")];
            if !picked.is_empty() {
                let start = picked.values().nth(rng.random_range(0..picked.len()));
                let start = self.key_tuple_of(start.expect("a picked key"));
                tails.insert(
                    0,
                    format!("WHERE ({keys}) >= {start} ORDER BY {keys} LIMIT {n}"),
                );
            }
            take(self.source.select(&key_shape, &tails)?, &mut picked);
        }
        Ok(picked.into_values().collect())
    }

    /// Compares the `name` column of both sides as sets: each source name must be on the target.
    fn by_name(&self, v: &mut TableValidation) -> Result<()> {
        let name = crate::value::quote_ident("name");
        let shape = Shape {
            table: self.shape.table.clone(),
            columns: vec![name.clone()],
            affinities: vec![crate::discover::Affinity::Text],
            key_positions: vec![0],
            key_exprs: vec![name.clone()],
            deferred: Vec::new(),
            anchored: Vec::new(),
            is_virtual: false,
            read_from: self.shape.read_from.clone(),
        };
        let tail = [format!("ORDER BY {name}")];
        let names = |side: &dyn RowSide| -> Result<Vec<Vec<Value>>> {
            Ok(side.select(&shape, &tail)?.into_iter().flatten().collect())
        };
        let ours = names(self.source)?;
        let theirs: std::collections::HashSet<Vec<u8>> =
            names(self.target)?.iter().map(|r| canonical(r)).collect();
        v.compared = ours.len() as u64;
        v.sampled = v.compared;
        for row in &ours {
            if !theirs.contains(&canonical(row)) {
                v.missing += 1;
                if v.differences.len() < self.options.max_examples {
                    v.differences.push(Difference {
                        key: shape.key_text(row),
                        kind: "missing".into(),
                        fields: Vec::new(),
                    });
                }
            }
        }
        let only_target = theirs.len().saturating_sub(ours.len() - v.missing as usize);
        if only_target > 0 {
            v.warnings.push(format!(
                "{only_target} applied migrations are only on the target (merged by name)"
            ));
        }
        Ok(())
    }

    /// The tail selecting the rows of `keys`, in key order.
    fn keys_in(&self, keys: &[Vec<Value>]) -> String {
        let sql_keys = self.keys_sql();
        let tuples: Vec<String> = keys.iter().map(|k| self.key_tuple_of(k)).collect();
        format!(
            "WHERE ({sql_keys}) IN (VALUES {}) ORDER BY {sql_keys}",
            tuples.join(", ")
        )
    }

    fn key_tuple_of(&self, key: &[Value]) -> String {
        let parts: Vec<String> = key.iter().map(Value::literal).collect();
        format!("({})", parts.join(", "))
    }

    /// The smallest and largest integer key of the source.
    fn key_range(&self) -> Result<(i64, i64)> {
        self.walker().key_range()
    }

    fn single_integer_key(&self) -> bool {
        self.walker().integer_key
    }

    /// Every row: source pages in key order; the same key range read from the target; rows
    /// matched key by key only when the two pages' hashes differ. What the target holds beyond
    /// the source's last key is extra.
    fn full(&self, v: &mut TableValidation) -> Result<()> {
        let ranges = self.walker().ranges(v.source_rows)?;
        self.full_ranges(v, &ranges)
    }

    /// Compares the rows of `keys` on both sides, many keys per read (the expression that reads
    /// a column exactly is long: it is sent once for many keys); what the target holds beyond
    /// the source's rows of those keys is extra.
    fn keyed(&self, v: &mut TableValidation, keys: &[Vec<Value>]) -> Result<()> {
        let tails: Vec<String> = keys
            .chunks(KEYS_PER_READ)
            .map(|chunk| self.keys_in(chunk))
            .collect();
        let sources = self.source.select(self.shape, &tails)?;
        let targets = self.target.select(self.shape, &tails)?;
        for (source_rows, target_rows) in sources.iter().zip(&targets) {
            self.check_json(source_rows, v);
            self.match_rows(source_rows, target_rows, true, v);
        }
        Ok(())
    }

    /// Compares the rows in `ranges` (several at once).
    fn full_ranges(&self, v: &mut TableValidation, ranges: &[KeyRange]) -> Result<()> {
        self.full_ranges_until(v, ranges, None)
    }

    /// [`Comparison::full`] of a table of `rows` source rows into a validation of its own,
    /// stopping at the next page once `stop` is set (with [`STOPPED`]).
    fn full_until(
        &self,
        rows: u64,
        stop: &std::sync::atomic::AtomicBool,
    ) -> Result<TableValidation> {
        let mut v = TableValidation::default();
        let ranges = self.walker().ranges(rows)?;
        self.full_ranges_until(&mut v, &ranges, Some(stop))?;
        Ok(v)
    }

    /// [`Comparison::full_ranges`], stopping at the next page once `stop` is set.
    fn full_ranges_until(
        &self,
        v: &mut TableValidation,
        ranges: &[KeyRange],
        stop: Option<&std::sync::atomic::AtomicBool>,
    ) -> Result<()> {
        let parts = self
            .walker()
            .walk_all(ranges, TableValidation::default, |part, page| {
                if stop.is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed)) {
                    return Err(Error::Refused(STOPPED.into()));
                }
                self.check_json(page.source, part);
                if page.equal {
                    part.compared += page.source.len() as u64;
                } else {
                    self.match_rows(page.source, page.target, true, part);
                }
                Ok(())
            })?;
        for part in parts {
            v.absorb(part, self.options.max_examples);
        }
        Ok(())
    }

    /// Source values of JSON-declared columns that are not valid JSON: a warning, not a mismatch
    /// (they are copied as they are).
    fn check_json(&self, rows: &[Vec<Value>], v: &mut TableValidation) {
        let json: Vec<usize> = self
            .shape
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                self.table.columns.iter().any(|t| {
                    crate::value::quote_ident(&t.name) == **c
                        && t.decl_type.to_ascii_uppercase().contains("JSON")
                })
            })
            .map(|(i, _)| i)
            .collect();
        for row in rows {
            for &i in &json {
                if let Value::Text(b) = &row[i] {
                    if serde_json::from_slice::<serde_json::Value>(b).is_err()
                        && v.warnings.len() < self.options.max_examples
                    {
                        v.warnings.push(format!(
                            "key {}: column {} holds text that is not valid JSON",
                            self.shape.key_text(row),
                            self.shape.columns[i]
                        ));
                    }
                }
            }
        }
    }

    /// Matches source rows with target rows by key and records what differs.
    fn match_rows(
        &self,
        source: &[Vec<Value>],
        target: &[Vec<Value>],
        count_extra: bool,
        v: &mut TableValidation,
    ) {
        let mut by_key: HashMap<Vec<u8>, &Vec<Value>> =
            target.iter().map(|r| (key_of(self.shape, r), r)).collect();
        for row in source {
            v.compared += 1;
            match by_key.remove(&key_of(self.shape, row)) {
                None => {
                    v.missing += 1;
                    self.example(v, row, "missing", Vec::new());
                }
                Some(other) if blake3::hash(&canonical(row)) != blake3::hash(&canonical(other)) => {
                    v.mismatched += 1;
                    let fields = self
                        .shape
                        .columns
                        .iter()
                        .zip(row.iter().zip(other.iter()))
                        .filter(|(_, (a, b))| {
                            canonical(&[(*a).clone()]) != canonical(&[(*b).clone()])
                        })
                        .map(|(c, (a, b))| FieldDiff {
                            column: c.clone(),
                            source: describe(a),
                            target: describe(b),
                        })
                        .collect();
                    self.example(v, row, "mismatch", fields);
                }
                Some(_) => {}
            }
        }
        if count_extra {
            let mut extra: Vec<&Vec<Value>> = by_key.into_values().collect();
            extra.sort_by_key(|r| self.shape.key_text(r));
            for row in extra {
                v.extra += 1;
                self.example(v, row, "extra", Vec::new());
            }
        }
    }

    fn example(&self, v: &mut TableValidation, row: &[Value], kind: &str, fields: Vec<FieldDiff>) {
        if v.differences.len() < self.options.max_examples {
            v.differences.push(Difference {
                key: self.shape.key_text(row),
                kind: kind.to_string(),
                fields,
            });
        }
    }
}

fn page_hash(rows: &[Vec<Value>]) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new();
    for r in rows {
        hasher.update(&canonical(r));
    }
    hasher.finalize()
}

fn table_seed(name: &str) -> u64 {
    let h = blake3::hash(name.as_bytes());
    u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
}

impl Validation {
    /// A short text for the end-of-run summary.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for p in &self.index_problems {
            out.push_str(&format!("validate: {p}\n"));
        }
        for t in &self.tables {
            let verdict = if t.ok { "ok" } else { "DIFFERS" };
            out.push_str(&format!(
                "validate {:<24} {verdict}: rows {} / {}, {} {}, {} mismatched, {} missing, {} extra\n",
                t.table,
                t.source_rows,
                t.target_rows,
                if self.full { t.compared } else { t.sampled },
                if self.full { "compared" } else { "sampled" },
                t.mismatched,
                t.missing,
                t.extra
            ));
            for p in &t.schema_problems {
                out.push_str(&format!("  schema: {p}\n"));
            }
            for d in &t.differences {
                out.push_str(&format!("  {} key {}\n", d.kind, d.key));
                for f in &d.fields {
                    out.push_str(&format!(
                        "    {}: source {} / target {}\n",
                        f.column, f.source, f.target
                    ));
                }
            }
        }
        out
    }
}

/// The `WHERE` of a page of keys after `after` and up to `upto` (either may be open).
fn key_bounds(keys: &str, after: &Option<String>, upto: &Option<String>) -> String {
    let mut conditions = Vec::new();
    if let Some(k) = after {
        conditions.push(format!("({keys}) > {k}"));
    }
    if let Some(k) = upto {
        conditions.push(format!("({keys}) <= {k}"));
    }
    if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tables of 93 and 200 rows with dense keys, 200 rows with two far-apart clusters of
    /// keys, and 200 rows of a composite key, in one file that is both source and target.
    fn sample_source(dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("s.sqlite");
        let mut db = rusqlite::Connection::open(&path).unwrap();
        let db = db.transaction().unwrap();
        db.execute_batch(
            "CREATE TABLE small (id INTEGER PRIMARY KEY, v TEXT);
             CREATE TABLE dense (id INTEGER PRIMARY KEY, v TEXT);
             CREATE TABLE sparse (id INTEGER PRIMARY KEY, v TEXT);
             CREATE TABLE pairs (a TEXT, b INTEGER, v TEXT, PRIMARY KEY (a, b)) WITHOUT ROWID;",
        )
        .unwrap();
        for i in 1..=200i64 {
            if i <= 93 {
                db.execute("INSERT INTO small VALUES (?, 'x')", [i])
                    .unwrap();
            }
            db.execute("INSERT INTO dense VALUES (?, 'x')", [i])
                .unwrap();
            let far = if i <= 100 { i } else { 1_000_000_000_000 + i };
            db.execute("INSERT INTO sparse VALUES (?, 'x')", [far])
                .unwrap();
            db.execute(
                "INSERT INTO pairs VALUES (?, ?, 'x')",
                rusqlite::params![format!("k{}", i % 7), i],
            )
            .unwrap();
        }
        db.commit().unwrap();
        path
    }

    fn sampled(table: &str, size: usize) -> TableValidation {
        let dir = tempfile::tempdir().unwrap();
        let path = sample_source(dir.path());
        let side = crate::source::SqliteSide::new(&path, "source").unwrap();
        let conn = crate::source::open_read_only(&path).unwrap();
        let schema = crate::discover::discover(&crate::source::SqliteCatalog(&conn)).unwrap();
        let options = Options {
            sample_size: size,
            seed: 3,
            all_rows: false,
            page: 1000,
            max_examples: 10,
            segments: 1,
        };
        let t = schema.table(table).unwrap();
        let survey = side.surveys(&[&Shape::new(t, &[])]).unwrap()[0];
        let sizes = Sizes {
            source: survey,
            target_rows: survey.rows,
        };
        let shape = Shape::new(t, &[]);
        let permits = Permits::new(1);
        let comparison = Comparison {
            source: &side,
            target: &side,
            shape: &shape,
            table: t,
            options,
            survey,
            permits: &permits,
        };
        validate_table(&comparison, &schema, None, sizes, None, None).unwrap()
    }

    #[test]
    fn a_table_no_larger_than_the_sample_is_compared_whole() {
        let v = sampled("small", 100);
        assert_eq!((v.sampled, v.compared, v.source_rows), (93, 93, 93));
        assert!(v.ok, "{v:?}");
    }

    #[test]
    fn a_larger_table_gets_exactly_the_sample_size_spread_over_its_keys() {
        for table in ["dense", "sparse", "pairs"] {
            let v = sampled(table, 100);
            assert_eq!(v.sampled, 100, "{table}: {v:?}");
            assert_eq!(v.compared, 100, "{table}");
            assert!(v.ok, "{table}: {v:?}");
        }
        // Spread: the sampled keys of the dense table reach every quarter of its range.
        let dir = tempfile::tempdir().unwrap();
        let path = sample_source(dir.path());
        let side = crate::source::SqliteSide::new(&path, "source").unwrap();
        let conn = crate::source::open_read_only(&path).unwrap();
        let schema = crate::discover::discover(&crate::source::SqliteCatalog(&conn)).unwrap();
        let table = schema.table("dense").unwrap();
        let shape = Shape::new(table, &[]);
        let comparison = Comparison {
            source: &side,
            target: &side,
            shape: &shape,
            table,
            options: Options {
                sample_size: 100,
                seed: 3,
                all_rows: false,
                page: 1000,
                max_examples: 10,
                segments: 1,
            },
            survey: Survey::default(),
            permits: &Permits::new(1),
        };
        let keys = comparison.sample_keys(100, 200).unwrap();
        let ids: std::collections::BTreeSet<i64> = keys
            .iter()
            .map(|k| match k[0] {
                Value::Integer(i) => i,
                _ => panic!("integer keys"),
            })
            .collect();
        assert_eq!(ids.len(), 100);
        for quarter in 0..4 {
            let inside = ids
                .iter()
                .filter(|&&i| (quarter * 50 + 1..=(quarter + 1) * 50).contains(&i))
                .count();
            assert!((20..=30).contains(&inside), "quarter {quarter}: {inside}");
        }
        // The same seed, the same keys.
        assert_eq!(comparison.sample_keys(100, 200).unwrap(), keys);
    }

    #[test]
    fn a_survey_counts_rows_and_their_width_in_one_statement_d1_can_parse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("widths.sqlite");
        let conn = rusqlite::Connection::open(&path).unwrap();
        let wide: Vec<String> = (0..100).map(|i| format!("c{i} TEXT")).collect();
        conn.execute_batch(&format!(
            "CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT, c BLOB, d REAL);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 250)
             INSERT INTO t SELECT i, 'abcdefghij', X'0102', NULL FROM n;
             CREATE TABLE wide ({});",
            wide.join(", ")
        ))
        .unwrap();
        drop(conn);
        let side = crate::source::SqliteSide::new(&path, "source").unwrap();
        let conn = crate::source::open_read_only(&path).unwrap();
        let schema = crate::discover::discover(&crate::source::SqliteCatalog(&conn)).unwrap();
        let shapes: Vec<Shape> = ["t", "wide"]
            .iter()
            .map(|t| Shape::new(schema.table(t).unwrap(), &[]))
            .collect();
        let surveys = side.surveys(&shapes.iter().collect::<Vec<_>>()).unwrap();
        // 8 + 8 for the integer, 10 + 8 for the text, 2 + 8 for the blob, 1 + 8 for the NULL.
        assert_eq!(
            surveys[0],
            Survey {
                rows: 250,
                row_bytes: Some(53)
            }
        );
        assert_eq!(surveys[0].first_page_rows(20_000), 20_000);
        assert_eq!(surveys[0].first_page_rows(100_000), PAGE_BYTES / 53);
        assert_eq!(surveys[1], Survey::default());
        assert_eq!(surveys[1].first_page_rows(20_000), 100);
        // D1 allows expressions 100 deep: the sum over 100 columns is a balanced tree.
        let sql = survey_sql(&shapes[1], "wide");
        let deepest = sql
            .chars()
            .scan(0i32, |depth, c| {
                *depth += match c {
                    '(' => 1,
                    ')' => -1,
                    _ => 0,
                };
                Some(*depth)
            })
            .max()
            .unwrap();
        assert!(deepest < 20, "nested {deepest} deep");
    }

    #[test]
    fn a_table_is_cut_into_segments_of_whole_pages() {
        // Northwind's order lines on D1 (rowids 1 to 607,128, pages of 21,845 rows): fifteen
        // segments of two pages, 30 pages (eight segments of 75,891 rows took four each, 32).
        assert_eq!(page_segments(607_128, 21_845, 16), 15);
        assert_eq!(607_128u64.div_ceil(15).div_ceil(21_845), 2);
        // Its orders (16,484 rows, pages of 8,388): three segments of one page.
        assert_eq!(page_segments(16_484, 8_388, 16), 3);
        assert_eq!(page_segments(8_000, 8_388, 16), 1);
        assert_eq!(page_segments(0, 100, 16), 1);
        // Never more than asked for.
        assert_eq!(page_segments(10_000_000, 20_000, 8), 8);
    }

    #[test]
    fn segments_cover_every_key_once() {
        let segs = key_segments(-5, 1000, 3);
        assert_eq!(segs.len(), 3);
        assert_eq!(segs[0].0, None);
        assert_eq!(segs[2].1, None);
        for k in -10..1010i64 {
            let inside = segs
                .iter()
                .filter(|(a, u)| a.is_none_or(|a| k > a) && u.is_none_or(|u| k <= u))
                .count();
            assert_eq!(inside, 1, "key {k}");
        }
        assert_eq!(key_segments(i64::MIN, i64::MAX, 4).len(), 4);
        assert_eq!(key_segments(3, 4, 4), vec![(None, None)]);
    }
}
