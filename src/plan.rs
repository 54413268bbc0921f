//! Planning: the order in which tables are loaded so that D1, which enforces foreign keys at the
//! end of every request, never sees a child row before its parent.
//!
//! Tables are sorted so parents come before children. Tables caught in a cycle (a self-reference,
//! or two tables pointing at each other) cannot be ordered; for them, foreign keys whose columns
//! are all nullable are *deferred*: rows are inserted with those columns NULL and an update pass
//! sets them once every table of the cycle is loaded. Input: a [`Schema`]; output: a [`Plan`].

use std::collections::HashMap;

use crate::discover::{Schema, Table};

/// A foreign key whose columns are loaded NULL and set after the data.
#[derive(Debug, Clone, PartialEq)]
pub struct DeferredKey {
    pub columns: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TablePlan {
    /// Index into `Schema::tables`.
    pub table: usize,
    /// Indexes (into `Schema::tables`) of the tables that must be loaded first.
    pub parents: Vec<usize>,
    pub deferred: Vec<DeferredKey>,
    /// True when rows of this table reference each other through a key that cannot be deferred,
    /// so its requests go one at a time, in key order.
    pub sequential: bool,
    /// Why the table sits where it does, for the dry-run plan.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Ordinary tables in load order.
    pub tables: Vec<TablePlan>,
    /// Virtual tables, created and filled after the data.
    pub virtual_tables: Vec<usize>,
}

/// Orders the tables of `schema` for loading.
pub fn plan(schema: &Schema) -> Plan {
    let index: HashMap<String, usize> = schema
        .tables
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.to_lowercase(), i))
        .collect();
    let parent_of = |t: &Table| -> Vec<Option<usize>> {
        t.foreign_keys
            .iter()
            .map(|fk| index.get(&fk.parent.to_lowercase()).copied())
            .collect()
    };

    let ordinary: Vec<usize> = (0..schema.tables.len())
        .filter(|&i| !schema.tables[i].is_virtual())
        .collect();
    let edges: HashMap<usize, Vec<usize>> = ordinary
        .iter()
        .map(|&i| {
            let mut ps: Vec<usize> = parent_of(&schema.tables[i]).into_iter().flatten().collect();
            ps.sort_unstable();
            ps.dedup();
            (i, ps)
        })
        .collect();

    let components = strongly_connected(&ordinary, &edges);
    let mut component_of = HashMap::new();
    for (c, members) in components.iter().enumerate() {
        for &m in members {
            component_of.insert(m, c);
        }
    }

    let mut tables = Vec::new();
    // Tarjan's algorithm yields components parents-first (a component after all it points to).
    for members in &components {
        let mut planned: Vec<TablePlan> = members
            .iter()
            .map(|&i| plan_table(schema, i, &parent_of(&schema.tables[i]), &component_of))
            .collect();
        for t in &mut planned {
            t.reason = describe(
                schema,
                &t.parents,
                members.len() > 1 || !t.deferred.is_empty(),
            );
        }
        tables.extend(order_within(planned));
    }
    // A cycle of NOT NULL keys cannot be ordered at all: keep only parents loaded earlier, so
    // the scheduler cannot stall (such rows fail at D1 with a clear foreign-key error).
    let position: HashMap<usize, usize> = tables
        .iter()
        .enumerate()
        .map(|(pos, t)| (t.table, pos))
        .collect();
    for (pos, t) in tables.iter_mut().enumerate() {
        t.parents.retain(|p| position[p] < pos);
    }

    Plan {
        tables,
        virtual_tables: (0..schema.tables.len())
            .filter(|&i| schema.tables[i].is_virtual())
            .collect(),
    }
}

fn plan_table(
    schema: &Schema,
    i: usize,
    parents_of_t: &[Option<usize>],
    component_of: &HashMap<usize, usize>,
) -> TablePlan {
    let t = &schema.tables[i];
    let mut deferred = Vec::new();
    let mut sequential = false;
    let mut parents = Vec::new();
    for (fk, parent) in t.foreign_keys.iter().zip(parents_of_t) {
        let Some(p) = *parent else { continue };
        let in_cycle = component_of[&p] == component_of[&i];
        let nullable = fk.columns.iter().all(|c| {
            t.columns
                .iter()
                .find(|col| col.name.eq_ignore_ascii_case(c))
                .is_some_and(|col| !col.not_null && col.pk == 0)
        });
        if in_cycle && nullable {
            deferred.push(DeferredKey {
                columns: fk.columns.clone(),
            });
        } else if p == i {
            sequential = true;
        } else if !parents.contains(&p) {
            parents.push(p);
        }
    }
    TablePlan {
        table: i,
        parents,
        deferred,
        sequential,
        reason: String::new(),
    }
}

/// Orders the tables of one cycle by the keys that were not deferred (Kahn's algorithm); what
/// cannot be ordered keeps catalog order.
fn order_within(mut pending: Vec<TablePlan>) -> Vec<TablePlan> {
    let mut out: Vec<TablePlan> = Vec::new();
    while !pending.is_empty() {
        let members: Vec<usize> = pending.iter().map(|t| t.table).collect();
        let ready = pending
            .iter()
            .position(|t| t.parents.iter().all(|p| !members.contains(p)))
            .unwrap_or(0);
        out.push(pending.remove(ready));
    }
    out
}

fn describe(schema: &Schema, parents: &[usize], cyclic: bool) -> String {
    let mut reason = if parents.is_empty() {
        "no foreign keys to other tables".to_string()
    } else {
        let names: Vec<&str> = parents
            .iter()
            .map(|&p| schema.tables[p].name.as_str())
            .collect();
        format!("after {}", names.join(", "))
    };
    if cyclic {
        reason.push_str("; references in a cycle are set after the data");
    }
    reason
}

/// Tarjan's strongly connected components, in reverse topological order of the condensation
/// (a component comes after every component it has edges to), members in input order.
fn strongly_connected(nodes: &[usize], edges: &HashMap<usize, Vec<usize>>) -> Vec<Vec<usize>> {
    struct State {
        index: HashMap<usize, usize>,
        low: HashMap<usize, usize>,
        on_stack: HashMap<usize, bool>,
        stack: Vec<usize>,
        next: usize,
        out: Vec<Vec<usize>>,
    }
    fn visit(v: usize, edges: &HashMap<usize, Vec<usize>>, s: &mut State) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v, true);
        for &w in edges.get(&v).into_iter().flatten() {
            if !edges.contains_key(&w) {
                continue;
            }
            if !s.index.contains_key(&w) {
                visit(w, edges, s);
                let lw = s.low[&w];
                let lv = s.low.get_mut(&v).expect("visited");
                *lv = (*lv).min(lw);
            } else if s.on_stack.get(&w).copied().unwrap_or(false) {
                let iw = s.index[&w];
                let lv = s.low.get_mut(&v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[&v] == s.index[&v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.insert(w, false);
                component.push(w);
                if w == v {
                    break;
                }
            }
            component.sort_unstable();
            s.out.push(component);
        }
    }
    let mut s = State {
        index: HashMap::new(),
        low: HashMap::new(),
        on_stack: HashMap::new(),
        stack: Vec::new(),
        next: 0,
        out: Vec::new(),
    };
    for &n in nodes {
        if !s.index.contains_key(&n) {
            visit(n, edges, &mut s);
        }
    }
    s.out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::{Column, ForeignKey, TableKind};

    fn table(name: &str, fks: &[(&str, &str, bool)]) -> Table {
        let mut columns = vec![Column {
            name: "id".into(),
            decl_type: "INTEGER".into(),
            not_null: false,
            pk: 1,
            hidden: 0,
        }];
        let mut foreign_keys = Vec::new();
        for (col, parent, not_null) in fks {
            columns.push(Column {
                name: col.to_string(),
                decl_type: "INTEGER".into(),
                not_null: *not_null,
                pk: 0,
                hidden: 0,
            });
            foreign_keys.push(ForeignKey {
                parent: parent.to_string(),
                columns: vec![col.to_string()],
            });
        }
        Table {
            name: name.into(),
            sql: String::new(),
            kind: TableKind::Rowid {
                rowid_alias: Some("id".into()),
            },
            columns,
            foreign_keys,
        }
    }

    fn order(schema: &Schema, p: &Plan) -> Vec<String> {
        p.tables
            .iter()
            .map(|t| schema.tables[t.table].name.clone())
            .collect()
    }

    #[test]
    fn parents_load_before_children_whatever_the_catalog_order() {
        let schema = Schema {
            tables: vec![
                table("lines", &[("order_id", "orders", true)]),
                table("orders", &[("customer_id", "Customers", true)]),
                table("customers", &[]),
            ],
            ..Schema::default()
        };
        let p = plan(&schema);
        assert_eq!(order(&schema, &p), ["customers", "orders", "lines"]);
        assert_eq!(p.tables[2].parents, vec![1]);
        assert!(p.tables.iter().all(|t| t.deferred.is_empty()));
    }

    #[test]
    fn nullable_self_reference_and_cycle_are_deferred() {
        let schema = Schema {
            tables: vec![
                table("employees", &[("boss", "employees", false)]),
                table("a", &[("b_id", "b", false)]),
                table("b", &[("a_id", "a", true)]),
            ],
            ..Schema::default()
        };
        let p = plan(&schema);
        let by_name = |n: &str| {
            p.tables
                .iter()
                .find(|t| schema.tables[t.table].name == n)
                .unwrap()
        };
        assert_eq!(by_name("employees").deferred.len(), 1);
        assert!(by_name("employees").parents.is_empty());
        // a.b_id is nullable: deferred; b.a_id is NOT NULL: b waits for a.
        assert_eq!(by_name("a").deferred.len(), 1);
        assert!(by_name("b").deferred.is_empty());
        let names = order(&schema, &p);
        let pos = |n: &str| names.iter().position(|x| x == n).unwrap();
        assert!(pos("a") < pos("b"), "{names:?}");
    }

    #[test]
    fn not_null_self_reference_is_sequential() {
        let schema = Schema {
            tables: vec![table("nodes", &[("parent", "nodes", true)])],
            ..Schema::default()
        };
        let p = plan(&schema);
        assert!(p.tables[0].sequential);
        assert!(p.tables[0].deferred.is_empty());
    }
}
