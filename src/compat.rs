//! D1 compatibility of a source: what D1 would refuse, found before anything is written.
//!
//! Schema checks (columns per table, virtual-table modules, reserved `_cf_` names, functions D1
//! does not provide in views and triggers) run before every forward run and in the dry run;
//! data checks (foreign-key violations already in the source, oversize rows, the database size)
//! run in the dry run, and oversize rows are also caught row by row in the real run.

use serde::Serialize;

use crate::discover::{is_d1_internal, Schema, TableKind};
use crate::value::Value;

/// D1's limits (developers.cloudflare.com/d1/platform/limits).
pub const MAX_COLUMNS: usize = 100;
pub const MAX_ROW_BYTES: usize = 2_000_000;
pub const MAX_DATABASE_BYTES: u64 = 10_000_000_000;
/// Cloudflare's docs list R*Tree (`rtree`, `rtree_i32`) too, but D1's engine as the local D1 runs
/// it (workerd) refuses `CREATE VIRTUAL TABLE ... USING rtree` (`not authorized`): the tool obeys
/// the stricter of the two, and refuses such a table before writing anything.
pub const ALLOWED_MODULES: &[&str] = &["fts5", "fts5vocab"];

/// Functions D1's authorizer refuses (workerd's allow-list leaves them out).
const REFUSED_FUNCTIONS: &[&str] = &[
    "sqlite_version",
    "sqlite_source_id",
    "sqlite_compileoption_used",
    "sqlite_compileoption_get",
    "sqlite_offset",
    "load_extension",
    "readfile",
    "writefile",
    "edit",
    "fts3_tokenizer",
    "matchinfo",
    "offsets",
    "optimize",
];

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Finding {
    /// "error": the run would fail or refuse; "warning": it goes on, as said.
    pub severity: String,
    pub kind: String,
    /// The table, index, view or trigger at fault.
    pub object: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub message: String,
}

impl Finding {
    pub fn error(kind: &str, object: &str, message: String) -> Finding {
        Finding {
            severity: "error".into(),
            kind: kind.into(),
            object: object.into(),
            key: None,
            message,
        }
    }

    pub fn warning(kind: &str, object: &str, message: String) -> Finding {
        Finding {
            severity: "warning".into(),
            ..Finding::error(kind, object, message)
        }
    }

    pub fn with_key(mut self, key: String) -> Finding {
        self.key = Some(key);
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == "error"
    }
}

/// What D1 would refuse in the schema.
pub fn check_schema(schema: &Schema) -> Vec<Finding> {
    let mut findings = Vec::new();
    for (name, reason) in &schema.skipped {
        if name.starts_with("sqlite_stat") {
            findings.push(Finding::warning("planner_statistics", name, reason.clone()));
        }
        if name.starts_with("PRAGMA ") {
            findings.push(Finding::warning("pragma_not_carried", name, reason.clone()));
        }
        if is_d1_internal(name) {
            findings.push(Finding::warning(
                "reserved_name",
                name,
                format!("table {name:?} starts with _cf_, a prefix D1 reserves; it is not copied ({reason})"),
            ));
        }
    }
    for t in &schema.tables {
        let stored = t.columns.len();
        if stored > MAX_COLUMNS {
            findings.push(Finding::error(
                "too_many_columns",
                &t.name,
                format!(
                    "table {:?} has {stored} columns; D1 allows {MAX_COLUMNS}",
                    t.name
                ),
            ));
        }
        if let TableKind::Virtual { module } = &t.kind {
            if !ALLOWED_MODULES.contains(&module.as_str()) {
                let hint = match module.as_str() {
                    "fts3" | "fts4" => "; MIGRATION_FTS=convert recreates it as FTS5",
                    "rtree" | "rtree_i32" => {
                        "; D1's engine refuses to create R*Tree tables (not authorized), though \
                         Cloudflare's docs list them: keep the boxes in a plain table with an index"
                    }
                    _ => "",
                };
                findings.push(Finding::error(
                    "virtual_table_module",
                    &t.name,
                    format!(
                        "virtual table {:?} uses module {module:?}; D1 allows only {}{hint}",
                        t.name,
                        ALLOWED_MODULES.join(", ")
                    ),
                ));
            }
        }
    }
    for o in &schema.objects {
        if is_d1_internal(&o.name) {
            findings.push(Finding::error(
                "reserved_name",
                &o.name,
                format!(
                    "{} {:?} starts with _cf_, a prefix D1 refuses",
                    o.kind, o.name
                ),
            ));
        }
        if o.sql.to_ascii_uppercase().starts_with("CREATE TEMP") {
            findings.push(Finding::error(
                "temp_object",
                &o.name,
                format!("{} {:?} is TEMP; D1 refuses TEMP objects", o.kind, o.name),
            ));
        }
        for f in functions_called(&o.sql) {
            if REFUSED_FUNCTIONS.contains(&f.as_str()) {
                findings.push(Finding::error(
                    "refused_function",
                    &o.name,
                    format!(
                        "{} {:?} calls {f}(), which D1 does not allow",
                        o.kind, o.name
                    ),
                ));
            }
        }
        if o.kind == "trigger" && o.sql.to_ascii_uppercase().contains("PRAGMA") {
            findings.push(Finding::error(
                "refused_pragma",
                &o.name,
                format!("trigger {:?} uses a PRAGMA", o.name),
            ));
        }
    }
    findings
}

/// Names followed by `(` outside quotes: the functions a statement calls (and a few keywords,
/// which are never on the refused list).
fn functions_called(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let chars: Vec<char> = sql.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' || c == '"' || c == '`' || c == '[' {
            let close = if c == '[' { ']' } else { c };
            i += 1;
            while i < chars.len() && chars[i] != close {
                i += 1;
            }
            i += 1;
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            if j < chars.len() && chars[j] == '(' {
                out.push(word.to_ascii_lowercase());
            }
            continue;
        }
        i += 1;
    }
    out
}

/// The size D1 counts for a row: the sum of its values.
pub fn row_bytes(row: &[Value]) -> usize {
    row.iter().map(Value::size).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn called_functions_are_found_outside_quotes() {
        let f = functions_called(
            "CREATE VIEW v AS SELECT sqlite_version(), upper('load_extension(x)'), \"readfile\" (1) FROM t",
        );
        assert_eq!(f, vec!["sqlite_version", "upper"]);
    }
}
