//! Planning: the order in which tables are loaded so that D1, which enforces foreign keys at the
//! end of every request, never sees a child row before its parent.
//!
//! Tables are sorted so parents come before children. Tables caught in a cycle (a self-reference,
//! or tables pointing at each other) cannot be ordered. For them:
//! - foreign keys whose columns are all nullable are *deferred*: rows are inserted with those
//!   columns NULL and an update pass sets them once every table of the cycle is loaded;
//! - when NOT NULL keys still form a cycle, the group is *anchored*: the first row of each of
//!   its tables is sent in one request (consistent at its end), every row is inserted with its
//!   NOT NULL cyclic keys pointing at the parent's anchor row, and the update pass sets the real
//!   keys. A shared anchor is impossible when such a column is in the primary key, in a UNIQUE
//!   index, or referred to by another key; the whole group is then loaded in one request.
//!
//! Input: a [`Schema`]; output: a [`Plan`].

use std::collections::HashMap;

use crate::discover::{Schema, Table};

/// A foreign key whose columns are loaded NULL and set after the data.
#[derive(Debug, Clone, PartialEq)]
pub struct DeferredKey {
    pub columns: Vec<String>,
}

/// A NOT NULL foreign key in a cycle: loaded with the values of the parent's anchor row (the
/// first row of the parent, in key order, whose `parent_columns` are all set) and set to its
/// real values after the data.
#[derive(Debug, Clone, PartialEq)]
pub struct AnchoredKey {
    pub columns: Vec<String>,
    /// Index into `Schema::tables` of the parent.
    pub parent: usize,
    /// The parent's columns the key refers to (its primary key when the key names none).
    pub parent_columns: Vec<String>,
}

/// How a group of tables bound by a cycle of NOT NULL foreign keys is loaded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GroupMode {
    /// Anchor rows first, in one request; then every row pointing at the anchors; then the
    /// update pass sets the real keys.
    Anchored,
    /// Every row of every table of the group in one request.
    Whole,
}

/// Tables bound by a cycle of NOT NULL foreign keys.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// Indexes into `Schema::tables`, in load order.
    pub tables: Vec<usize>,
    pub mode: GroupMode,
    /// For `Whole`: why no anchor can be shared (the column at fault).
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TablePlan {
    /// Index into `Schema::tables`.
    pub table: usize,
    /// Indexes (into `Schema::tables`) of the tables that must be loaded first.
    pub parents: Vec<usize>,
    pub deferred: Vec<DeferredKey>,
    pub anchored: Vec<AnchoredKey>,
    /// Index into `Plan::groups` of the group the table belongs to, if any.
    pub group: Option<usize>,
    /// Why the table sits where it does, for the dry-run plan.
    pub reason: String,
    /// True when rows of this table reference each other through a NOT NULL key. The copy
    /// anchors such keys; a sync sends the table's requests one at a time, in key order.
    pub sequential: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Ordinary tables in load order.
    pub tables: Vec<TablePlan>,
    /// Virtual tables, created and filled after the data.
    pub virtual_tables: Vec<usize>,
    /// Groups bound by NOT NULL cycles.
    pub groups: Vec<Group>,
}

/// The primary-key columns of a table, in key order.
fn primary_key(t: &Table) -> Vec<String> {
    let mut pk: Vec<_> = t.columns.iter().filter(|c| c.pk > 0).collect();
    pk.sort_by_key(|c| c.pk);
    pk.iter().map(|c| c.name.clone()).collect()
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
    let mut groups = Vec::new();
    // Tarjan's algorithm yields components parents-first (a component after all it points to).
    for members in &components {
        let mut planned: Vec<TablePlan> = members
            .iter()
            .map(|&i| plan_table(schema, i, &parent_of(&schema.tables[i]), &component_of))
            .collect();
        if let Some(mode) = not_null_cycle(schema, &planned, members) {
            let group = groups.len();
            for t in &mut planned {
                let table = &schema.tables[t.table];
                let parents_of_t = parent_of(table);
                t.group = Some(group);
                t.parents.retain(|p| !members.contains(p));
                if mode.0 == GroupMode::Whole {
                    t.deferred.clear();
                    continue;
                }
                for (fk, parent) in table.foreign_keys.iter().zip(&parents_of_t) {
                    let Some(p) = *parent else { continue };
                    if members.contains(&p) && !is_nullable(table, &fk.columns) {
                        t.anchored.push(AnchoredKey {
                            columns: fk.columns.clone(),
                            parent: p,
                            parent_columns: referred_columns(schema, fk, p),
                        });
                    }
                }
            }
            groups.push(Group {
                tables: planned.iter().map(|t| t.table).collect(),
                mode: mode.0,
                reason: mode.1,
            });
        }
        for t in &mut planned {
            t.reason = describe(
                schema,
                &t.parents,
                members.len() > 1 || !t.deferred.is_empty() || t.group.is_some(),
            );
            if let Some(g) = t.group {
                t.reason.push_str(match groups[g].mode {
                    GroupMode::Anchored => {
                        "; NOT NULL references in a cycle load pointing at anchor rows sent first"
                    }
                    GroupMode::Whole => "; its group loads in one request",
                });
            }
        }
        tables.extend(order_within(planned));
    }
    // What could still not be ordered keeps only parents loaded earlier, so the scheduler cannot
    // stall.
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
        groups,
    }
}

fn is_nullable(t: &Table, columns: &[String]) -> bool {
    columns.iter().all(|c| {
        t.columns
            .iter()
            .find(|col| col.name.eq_ignore_ascii_case(c))
            .is_some_and(|col| !col.not_null && col.pk == 0)
    })
}

/// The parent columns a key refers to: the ones it names, else the parent's primary key.
fn referred_columns(
    schema: &Schema,
    fk: &crate::discover::ForeignKey,
    parent: usize,
) -> Vec<String> {
    if fk.parent_columns.len() == fk.columns.len() {
        fk.parent_columns.clone()
    } else {
        primary_key(&schema.tables[parent])
    }
}

/// Whether the keys left after deferral (NOT NULL keys within the component) still form a
/// cycle; if so, how the group loads, and for `Whole` why.
fn not_null_cycle(
    schema: &Schema,
    planned: &[TablePlan],
    members: &[usize],
) -> Option<(GroupMode, String)> {
    // NOT NULL keys within the component are the `parents` (or a self-reference) left by
    // `plan_table`; a cycle among them is a strongly connected part or a self-loop.
    let mut edges: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut self_loop = false;
    for t in planned {
        let table = &schema.tables[t.table];
        let mut ps = Vec::new();
        for fk in &table.foreign_keys {
            let Some(p) = schema
                .tables
                .iter()
                .position(|x| x.name.eq_ignore_ascii_case(&fk.parent))
            else {
                continue;
            };
            if members.contains(&p) && !is_nullable(table, &fk.columns) {
                if p == t.table {
                    self_loop = true;
                }
                ps.push(p);
            }
        }
        edges.insert(t.table, ps);
    }
    let cyclic = self_loop
        || strongly_connected(members, &edges)
            .iter()
            .any(|c| c.len() > 1);
    if !cyclic {
        return None;
    }
    // Every NOT NULL key within the group would be anchored: each column must be free to hold
    // a shared value for a while.
    for t in planned {
        let table = &schema.tables[t.table];
        for fk in &table.foreign_keys {
            let Some(p) = schema
                .tables
                .iter()
                .position(|x| x.name.eq_ignore_ascii_case(&fk.parent))
            else {
                continue;
            };
            if !members.contains(&p) || is_nullable(table, &fk.columns) {
                continue;
            }
            if referred_columns(schema, fk, p).len() != fk.columns.len() {
                return Some((
                    GroupMode::Whole,
                    format!(
                        "the key of {:?} to {:?} refers to no known columns",
                        table.name, fk.parent
                    ),
                ));
            }
            if let Some(why) = unanchorable(schema, table, &fk.columns) {
                return Some((GroupMode::Whole, why));
            }
        }
    }
    Some((GroupMode::Anchored, String::new()))
}

/// Why rows of `table` cannot share one value in `columns` for a while, if they cannot.
fn unanchorable(schema: &Schema, table: &Table, columns: &[String]) -> Option<String> {
    for c in columns {
        let named = |name: &String| name.eq_ignore_ascii_case(c);
        if table
            .columns
            .iter()
            .any(|col| named(&col.name) && col.pk > 0)
        {
            return Some(format!(
                "column {c:?} of {:?} is in its primary key",
                table.name
            ));
        }
        if table
            .unique
            .iter()
            .any(|set| set.iter().any(|n| named(n) || n.is_empty()))
        {
            return Some(format!(
                "column {c:?} of {:?} is in a UNIQUE index",
                table.name
            ));
        }
        for other in &schema.tables {
            for fk in &other.foreign_keys {
                if !fk.parent.eq_ignore_ascii_case(&table.name) {
                    continue;
                }
                let referred = if fk.parent_columns.len() == fk.columns.len() {
                    fk.parent_columns.clone()
                } else {
                    primary_key(table)
                };
                if referred.iter().any(named) {
                    return Some(format!(
                        "column {c:?} of {:?} is referred to by a key of {:?}",
                        table.name, other.name
                    ));
                }
            }
        }
    }
    None
}

fn plan_table(
    schema: &Schema,
    i: usize,
    parents_of_t: &[Option<usize>],
    component_of: &HashMap<usize, usize>,
) -> TablePlan {
    let t = &schema.tables[i];
    let mut deferred = Vec::new();
    let mut parents = Vec::new();
    let mut sequential = false;
    for (fk, parent) in t.foreign_keys.iter().zip(parents_of_t) {
        let Some(p) = *parent else { continue };
        let in_cycle = component_of[&p] == component_of[&i];
        if in_cycle && is_nullable(t, &fk.columns) {
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
        anchored: Vec::new(),
        group: None,
        reason: String::new(),
        sequential,
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
                parent_columns: vec![],
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
            unique: vec![],
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
    fn not_null_cycles_are_anchored() {
        let schema = Schema {
            tables: vec![
                table("nodes", &[("parent", "nodes", true)]),
                table("store", &[("manager", "staff", true)]),
                table("staff", &[("store_id", "store", true)]),
                table("a", &[("b_id", "b", true)]),
                table("b", &[("c_id", "c", true)]),
                table("c", &[("a_id", "a", true), ("note", "a", false)]),
            ],
            ..Schema::default()
        };
        let p = plan(&schema);
        assert_eq!(p.groups.len(), 3);
        assert!(p.groups.iter().all(|g| g.mode == GroupMode::Anchored));
        let by_name = |n: &str| {
            p.tables
                .iter()
                .find(|t| schema.tables[t.table].name == n)
                .unwrap()
        };
        let nodes = by_name("nodes");
        assert_eq!(nodes.anchored.len(), 1);
        assert_eq!(nodes.anchored[0].parent_columns, vec!["id".to_string()]);
        assert_eq!(by_name("store").anchored[0].parent, 2);
        assert!(by_name("store").parents.is_empty() && by_name("staff").parents.is_empty());
        let c = by_name("c");
        assert_eq!((c.anchored.len(), c.deferred.len()), (1, 1));
        assert_eq!(
            p.groups[by_name("a").group.unwrap()].tables.len(),
            3,
            "a ring of three is one group"
        );
    }

    #[test]
    fn a_unique_cyclic_key_makes_its_group_load_whole() {
        let mut store = table("store", &[("manager", "staff", true)]);
        store.unique = vec![vec!["manager".into()]];
        let schema = Schema {
            tables: vec![store, table("staff", &[("store_id", "store", true)])],
            ..Schema::default()
        };
        let p = plan(&schema);
        assert_eq!(p.groups.len(), 1);
        assert_eq!(p.groups[0].mode, GroupMode::Whole);
        assert!(p.groups[0]
            .reason
            .contains("\"manager\" of \"store\" is in a UNIQUE index"));
        assert!(p
            .tables
            .iter()
            .all(|t| t.anchored.is_empty() && t.parents.is_empty()));
    }
}
