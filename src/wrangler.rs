//! wrangler's conventions: a D1 database named by its binding (`D1_DATABASE_BINDING`) or its name
//! (`MIGRATION_D1_DATABASE`) is resolved to its id from `wrangler.json`, `wrangler.jsonc` or
//! `wrangler.toml` in a folder, the first found in that order, as wrangler reads them: the
//! top-level `d1_databases` entries, each with `binding`, `database_name` and `database_id`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Debug, Deserialize)]
struct WranglerConfig {
    #[serde(default)]
    d1_databases: Vec<D1Binding>,
}

#[derive(Debug, Clone, Deserialize)]
struct D1Binding {
    #[serde(default)]
    binding: String,
    #[serde(default)]
    database_name: String,
    #[serde(default)]
    database_id: String,
}

/// How the database is named.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum By<'a> {
    Binding(&'a str),
    Name(&'a str),
}

/// The id of the database named `by` in the wrangler configuration of `dir`.
pub fn resolve(dir: &Path, by: By<'_>) -> Result<String> {
    let (path, config) = read(dir)?;
    let (field, wanted) = match by {
        By::Binding(b) => ("D1_DATABASE_BINDING", b),
        By::Name(n) => ("MIGRATION_D1_DATABASE", n),
    };
    let matches: Vec<&D1Binding> = config
        .d1_databases
        .iter()
        .filter(|d| match by {
            By::Binding(b) => d.binding == b,
            By::Name(n) => d.database_name == n,
        })
        .collect();
    let known: Vec<String> = config
        .d1_databases
        .iter()
        .map(|d| format!("{} ({})", d.binding, d.database_name))
        .collect();
    match matches.as_slice() {
        [] => Err(Error::Config(format!(
            "{field}={wanted:?}: {} has no such D1 database; it has: {}",
            path.display(),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ))),
        [one] if !one.database_id.is_empty() => Ok(one.database_id.clone()),
        [_] => Err(Error::Config(format!(
            "{field}={wanted:?}: the entry in {} has no database_id",
            path.display()
        ))),
        many => {
            let ids: Vec<&str> = many.iter().map(|d| d.database_id.as_str()).collect();
            if ids.iter().all(|id| *id == ids[0]) && !ids[0].is_empty() {
                Ok(ids[0].to_string())
            } else {
                Err(Error::Config(format!(
                    "{field}={wanted:?} is ambiguous in {}: it names databases {}; set MIGRATION_D1_DATABASE_ID",
                    path.display(),
                    ids.join(", ")
                )))
            }
        }
    }
}

fn read(dir: &Path) -> Result<(PathBuf, WranglerConfig)> {
    for name in ["wrangler.json", "wrangler.jsonc", "wrangler.toml"] {
        let path = dir.join(name);
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let parsed = if name.ends_with(".toml") {
            toml::from_str::<WranglerConfig>(&text).map_err(|e| e.to_string())
        } else {
            json5::from_str::<WranglerConfig>(&text).map_err(|e| e.to_string())
        };
        return parsed
            .map(|c| (path.clone(), c))
            .map_err(|e| Error::Config(format!("{} cannot be read: {e}", path.display())));
    }
    Err(Error::Config(format!(
        "a D1 database is named (D1_DATABASE_BINDING or MIGRATION_D1_DATABASE) but {} has no \
         wrangler.json, wrangler.jsonc or wrangler.toml; set MIGRATION_D1_DATABASE_ID instead",
        dir.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOML: &str = r#"
name = "shop"
main = "src/index.ts"

[[d1_databases]]
binding = "DB"
database_name = "shop-prod"
database_id = "11111111-aaaa"

[[d1_databases]]
binding = "ANALYTICS"
database_name = "shop-analytics"
database_id = "22222222-bbbb"
"#;

    fn dir_with(name: &str, text: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(name), text).unwrap();
        dir
    }

    #[test]
    fn two_bindings_resolve_by_binding_and_by_name() {
        let dir = dir_with("wrangler.toml", TOML);
        assert_eq!(
            resolve(dir.path(), By::Binding("DB")).unwrap(),
            "11111111-aaaa"
        );
        assert_eq!(
            resolve(dir.path(), By::Binding("ANALYTICS")).unwrap(),
            "22222222-bbbb"
        );
        assert_eq!(
            resolve(dir.path(), By::Name("shop-prod")).unwrap(),
            "11111111-aaaa"
        );
        assert_eq!(
            resolve(dir.path(), By::Name("shop-analytics")).unwrap(),
            "22222222-bbbb"
        );
    }

    #[test]
    fn jsonc_with_comments_is_read_and_preferred_over_toml() {
        let dir = dir_with(
            "wrangler.jsonc",
            r#"{
              // the production database
              "d1_databases": [
                { "binding": "DB", "database_name": "from-jsonc", "database_id": "33333333-cccc", },
              ],
            }"#,
        );
        std::fs::write(dir.path().join("wrangler.toml"), TOML).unwrap();
        assert_eq!(
            resolve(dir.path(), By::Binding("DB")).unwrap(),
            "33333333-cccc"
        );
    }

    #[test]
    fn a_missing_name_is_an_error_listing_what_exists() {
        let dir = dir_with("wrangler.toml", TOML);
        let e = resolve(dir.path(), By::Name("nope"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("MIGRATION_D1_DATABASE=\"nope\""), "{e}");
        assert!(e.contains("DB (shop-prod)"), "{e}");
        let empty = tempfile::tempdir().unwrap();
        let e = resolve(empty.path(), By::Binding("DB"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no wrangler.json, wrangler.jsonc or wrangler.toml"),
            "{e}"
        );
    }

    #[test]
    fn an_ambiguous_name_is_an_error() {
        let dir = dir_with(
            "wrangler.toml",
            r#"
[[d1_databases]]
binding = "A"
database_name = "same"
database_id = "id-a"

[[d1_databases]]
binding = "B"
database_name = "same"
database_id = "id-b"
"#,
        );
        let e = resolve(dir.path(), By::Name("same"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ambiguous"), "{e}");
        assert!(e.contains("id-a, id-b"), "{e}");
    }
}
