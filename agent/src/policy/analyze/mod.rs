//! What a SQL text does, read from its parse tree: statement classes, the tables it reads and
//! writes, the functions it calls, and the risky shapes policies care about (unscoped
//! DELETE/UPDATE, COPY to programs or files, role changes, prepared statements). Pure.
use std::collections::BTreeSet;
use std::ops::ControlFlow;

use serde::Serialize;
use sqlparser::ast::{
    CopySource, CopyTarget, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Ident,
    ObjectName, ObjectNamePart, ObjectType, Query, Select, SelectItem, Set, SetExpr, Statement,
    TableFactor, Value, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

mod exprs;

pub use exprs::{UNSAFE_CLIENT_ENCODINGS, const_true, lexer_safe};
use exprs::{compares_literals, query_limit, references_column, select_into, setting_value};

/// A statement class, the unit policies allow.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    /// SELECT, cursors, TABLE, VALUES.
    Read,
    /// INSERT, UPDATE, DELETE, MERGE, LOCK.
    Write,
    /// CREATE, ALTER, DROP, TRUNCATE, COMMENT, SELECT INTO.
    Ddl,
    /// GRANT, REVOKE, roles and users.
    Dcl,
    /// VACUUM, ANALYZE, and everything not classified otherwise.
    Admin,
    /// COPY.
    Copy,
    /// CALL, fast-path function calls.
    FunctionCall,
    /// BEGIN, COMMIT, ROLLBACK, SAVEPOINT.
    Transaction,
    /// SET, RESET, SHOW, DISCARD, LISTEN, NOTIFY, PREPARE/EXECUTE/DEALLOCATE bookkeeping.
    SessionSet,
}

impl Class {
    /// The class's name as policies write it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Ddl => "ddl",
            Self::Dcl => "dcl",
            Self::Admin => "admin",
            Self::Copy => "copy",
            Self::FunctionCall => "function-call",
            Self::Transaction => "transaction",
            Self::SessionSet => "session-set",
        }
    }
}

/// How a statement uses a table.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// Reads rows.
    Read,
    /// Changes rows.
    Write,
}

/// A name as PostgreSQL folds it: unquoted identifiers to lower case, quoted ones as written.
pub fn fold(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    }
}

fn parts(name: &ObjectName) -> Vec<String> {
    name.0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => fold(i),
            ObjectNamePart::Function(f) => fold(&f.name),
        })
        .collect()
}

/// A table reference: schema when written, and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct TableRef {
    /// Schema, when qualified.
    pub schema: Option<String>,
    /// Table name.
    pub name: String,
    /// How it is used.
    pub access: Access,
}

impl TableRef {
    fn from_name(name: &ObjectName, access: Access) -> Self {
        let mut p = parts(name);
        let table = p.pop().unwrap_or_default();
        Self {
            schema: p.pop(),
            name: table,
            access,
        }
    }
}

/// A function call.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FuncRef {
    /// Schema, when qualified.
    pub schema: Option<String>,
    /// Function name.
    pub name: String,
    /// The first argument, when it is a numeric literal (for bounds such as pg_sleep's).
    pub first_number: Option<f64>,
    /// Whether the first argument is anything but a literal.
    pub first_dynamic: bool,
}

/// Everything a SQL text does, over all its statements, nested ones included.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Facts {
    /// Command names in order, e.g. `SELECT`, `DROP TABLE`.
    pub commands: Vec<String>,
    /// Classes of every statement.
    pub classes: BTreeSet<Class>,
    /// Tables used (CTE names removed).
    pub tables: BTreeSet<TableRef>,
    /// Functions called.
    pub functions: Vec<FuncRef>,
    /// Column names referenced (last identifier part, folded).
    pub columns: BTreeSet<String>,
    /// Whether `*` or `t.*` is selected.
    pub wildcard: bool,
    /// Relation names used as values (whole-row references such as `SELECT p FROM payments p`).
    pub row_refs: bool,
    /// Column references and whether each is a bare projected column (`SELECT c` or
    /// `SELECT c AS x`, outside set operations): the only use that keeps a masked column's
    /// origin, so the only one masking can follow.
    pub column_uses: BTreeSet<(String, bool)>,
    /// The LIMIT (or FETCH FIRST) of the first top-level query, when it is a literal.
    pub limit: Option<u64>,
    /// Whether a top-level query was seen (so `limit: None` means "no LIMIT").
    pub has_query: bool,
    /// A COPY ... TO (data leaves the server).
    pub copy_to: bool,
    /// A COPY in binary format.
    pub copy_binary: bool,
    /// DELETE/UPDATE commands whose WHERE does not limit rows.
    pub unscoped: Vec<String>,
    /// COPY to or from a program.
    pub copy_program: bool,
    /// COPY to or from a server file.
    pub copy_file: bool,
    /// SET ROLE / SET SESSION AUTHORIZATION / SET role = ...
    pub role_change: bool,
    /// SET search_path.
    pub search_path_change: bool,
    /// Names defined by PREPARE.
    pub prepares: Vec<String>,
    /// Names run by EXECUTE.
    pub executes: Vec<String>,
    /// The parser's complaint, when the text does not parse.
    pub parse_error: Option<String>,
    /// A SET that would make PostgreSQL read statement text differently from pgwarden's
    /// parser (`standard_conforming_strings` off, a client encoding whose multibyte characters
    /// can end in `\\`), as `name = value`.
    pub lexer_setting: Option<String>,
    /// Whether these facts depend on the values of literals (a LIMIT, a numeric argument, a
    /// comparison of literals in a WHERE that decides whether a write is scoped, a SET value
    /// that is checked): then they hold for this text only, not for its shape.
    pub literal_sensitive: bool,
}

/// Parses `sql` (PostgreSQL dialect) and collects its facts.
pub fn analyze(sql: &str) -> Facts {
    let statements = match Parser::parse_sql(&PostgreSqlDialect {}, sql) {
        Ok(s) => s,
        Err(e) => {
            return Facts {
                parse_error: Some(e.to_string()),
                ..Facts::default()
            };
        }
    };
    let mut c = Collector::default();
    for s in &statements {
        let _ = s.visit(&mut c);
    }
    let mut facts = c.facts;
    // A bare identifier naming a table or alias in scope is a whole-row reference.
    if facts.column_uses.iter().any(|(n, _)| c.aliases.contains(n)) {
        facts.row_refs = true;
    }
    // Names bound by WITH are not tables.
    facts
        .tables
        .retain(|t| t.schema.is_some() || !c.ctes.contains(&t.name));
    facts
}

#[derive(Default)]
struct Collector {
    facts: Facts,
    ctes: BTreeSet<String>,
    aliases: BTreeSet<String>,
    /// Addresses of projection expressions that are bare column references.
    bare: std::collections::HashSet<usize>,
    /// Addresses of SELECTs under a set operation (their columns lose their origin).
    setop_selects: std::collections::HashSet<usize>,
}

fn addr<T>(x: &T) -> usize {
    std::ptr::from_ref(x) as usize
}

fn collect_setop_selects(e: &SetExpr, out: &mut std::collections::HashSet<usize>) {
    match e {
        SetExpr::Select(s) => {
            out.insert(addr(s.as_ref()));
        }
        SetExpr::SetOperation { left, right, .. } => {
            collect_setop_selects(left, out);
            collect_setop_selects(right, out);
        }
        SetExpr::Query(q) => collect_setop_selects(&q.body, out),
        _ => {}
    }
}

impl Collector {
    fn class(&mut self, class: Class, command: &str) {
        self.facts.classes.insert(class);
        self.facts.commands.push(command.to_owned());
    }

    fn write_target(&mut self, name: &ObjectName) {
        self.facts
            .tables
            .insert(TableRef::from_name(name, Access::Write));
    }

    fn scoped(&mut self, command: &str, selection: Option<&Expr>) {
        let scoped = selection.is_some_and(|e| !const_true(e) && references_column(e));
        if selection.is_some_and(compares_literals) {
            self.facts.literal_sensitive = true;
        }
        if !scoped {
            self.facts.unscoped.push(command.to_owned());
        }
    }

    fn set_variable(&mut self, variable: &ObjectName, values: &[&Expr]) {
        let name = parts(variable).join(".");
        match name.as_str() {
            "role" | "session_authorization" | "session authorization" => {
                self.facts.role_change = true
            }
            "search_path" => self.facts.search_path_change = true,
            "standard_conforming_strings" | "client_encoding" => {
                self.facts.literal_sensitive = true;
                let value = match values {
                    [v] => setting_value(v),
                    _ => None,
                };
                let safe = value.as_deref().is_some_and(|v| lexer_safe(&name, v));
                if !safe {
                    self.facts.lexer_setting = Some(format!(
                        "{name} = {}",
                        values
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }
            _ => {}
        }
    }
}

impl Visitor for Collector {
    type Break = ();

    fn pre_visit_statement(&mut self, s: &Statement) -> ControlFlow<()> {
        use Statement as S;
        match s {
            S::Query(q) => {
                if !self.facts.has_query {
                    self.facts.has_query = true;
                    self.facts.limit = query_limit(q);
                    self.facts.literal_sensitive |= self.facts.limit.is_some();
                }
                if select_into(q) {
                    self.class(Class::Ddl, "SELECT INTO");
                } else {
                    self.class(Class::Read, "SELECT");
                }
            }
            S::Insert(i) => {
                self.class(Class::Write, "INSERT");
                if let sqlparser::ast::TableObject::TableName(n) = &i.table {
                    self.write_target(n);
                }
            }
            S::Update(u) => {
                self.class(Class::Write, "UPDATE");
                if let TableFactor::Table { name, .. } = &u.table.relation {
                    self.write_target(name);
                }
                self.scoped("UPDATE", u.selection.as_ref());
            }
            S::Delete(d) => {
                self.class(Class::Write, "DELETE");
                let from = match &d.from {
                    sqlparser::ast::FromTable::WithFromKeyword(t)
                    | sqlparser::ast::FromTable::WithoutKeyword(t) => t,
                };
                for t in from {
                    if let TableFactor::Table { name, .. } = &t.relation {
                        self.write_target(name);
                    }
                }
                self.scoped("DELETE", d.selection.as_ref());
            }
            S::Merge(_) => {
                self.class(Class::Write, "MERGE");
                self.facts.unscoped.push("MERGE".into());
            }
            S::Lock(_) | S::LockTables { .. } => self.class(Class::Write, "LOCK"),
            S::Truncate(t) => {
                self.class(Class::Ddl, "TRUNCATE");
                for n in &t.table_names {
                    self.write_target(&n.name);
                }
            }
            S::Copy {
                source,
                to,
                target,
                options,
                legacy_options,
                ..
            } => {
                self.class(Class::Copy, if *to { "COPY TO" } else { "COPY FROM" });
                self.facts.copy_to |= *to;
                let binary = options.iter().any(|o| {
                    matches!(o, sqlparser::ast::CopyOption::Format(f) if f.value.eq_ignore_ascii_case("binary"))
                }) || legacy_options
                    .iter()
                    .any(|o| matches!(o, sqlparser::ast::CopyLegacyOption::Binary));
                self.facts.copy_binary |= binary;
                match target {
                    CopyTarget::Program { .. } => self.facts.copy_program = true,
                    CopyTarget::File { .. } => self.facts.copy_file = true,
                    CopyTarget::Stdin | CopyTarget::Stdout => {}
                }
                match source {
                    CopySource::Table { table_name, .. } => {
                        let access = if *to { Access::Read } else { Access::Write };
                        self.facts
                            .tables
                            .insert(TableRef::from_name(table_name, access));
                    }
                    // COPY (query) TO: the query is read like any SELECT.
                    CopySource::Query(_) => {
                        self.facts.classes.insert(Class::Read);
                    }
                }
            }
            S::Set(set) => {
                self.class(Class::SessionSet, "SET");
                match set {
                    Set::SetRole { .. } | Set::SetSessionAuthorization(_) => {
                        self.facts.role_change = true
                    }
                    Set::SingleAssignment {
                        variable, values, ..
                    } => self.set_variable(variable, &values.iter().collect::<Vec<_>>()),
                    Set::ParenthesizedAssignments { variables, values } => {
                        for (i, v) in variables.iter().enumerate() {
                            let value: Vec<&Expr> = values.get(i).into_iter().collect();
                            self.set_variable(v, &value);
                        }
                    }
                    Set::MultipleAssignments { assignments } => {
                        for a in assignments {
                            self.set_variable(&a.name, &[&a.value]);
                        }
                    }
                    Set::SetNames { charset_name, .. } => {
                        let value = Expr::Value(
                            Value::SingleQuotedString(charset_name.value.clone()).into(),
                        );
                        self.set_variable(
                            &ObjectName::from(vec![Ident::new("client_encoding")]),
                            &[&value],
                        );
                    }
                    _ => {}
                }
            }
            S::ShowVariable { .. } | S::ShowVariables { .. } | S::Reset(_) | S::Discard { .. } => {
                self.class(Class::SessionSet, "SHOW/RESET");
            }
            S::LISTEN { .. } | S::UNLISTEN { .. } | S::NOTIFY { .. } => {
                self.class(Class::SessionSet, "LISTEN/NOTIFY")
            }
            S::StartTransaction { .. } => self.class(Class::Transaction, "BEGIN"),
            S::Commit { .. } => self.class(Class::Transaction, "COMMIT"),
            S::Rollback { .. } => self.class(Class::Transaction, "ROLLBACK"),
            S::Savepoint { .. } | S::ReleaseSavepoint { .. } => {
                self.class(Class::Transaction, "SAVEPOINT")
            }
            S::Prepare { name, .. } => {
                self.facts.commands.push("PREPARE".into());
                self.facts.classes.insert(Class::SessionSet);
                self.facts.prepares.push(fold(name));
            }
            S::Execute { name, .. } => {
                self.facts.commands.push("EXECUTE".into());
                self.facts.classes.insert(Class::SessionSet);
                if let Some(n) = name {
                    self.facts.executes.push(parts(n).join("."));
                }
            }
            S::Deallocate { .. } => self.class(Class::SessionSet, "DEALLOCATE"),
            S::Explain { .. } => self.facts.commands.push("EXPLAIN".into()),
            S::Declare { .. } => self.class(Class::Read, "DECLARE"),
            S::Fetch { .. } | S::Close { .. } => self.class(Class::Read, "FETCH/CLOSE"),
            S::Call(_) => self.class(Class::FunctionCall, "CALL"),
            S::Grant(_)
            | S::Revoke(_)
            | S::GrantRole(_)
            | S::RevokeRole(_)
            | S::CreateRole(_)
            | S::AlterRole { .. }
            | S::CreateUser(_)
            | S::AlterUser(_)
            | S::AlterDefaultPrivileges(_)
            | S::CreateUserMapping(_) => self.class(Class::Dcl, "GRANT/ROLE"),
            S::Drop {
                object_type: ObjectType::Role | ObjectType::User,
                ..
            } => self.class(Class::Dcl, "DROP ROLE"),
            S::Vacuum(_) | S::Analyze(_) | S::Kill { .. } | S::LoadData { .. } | S::Load { .. } => {
                self.class(Class::Admin, "ADMIN");
            }
            other => {
                let text = other.to_string();
                let command: String = text
                    .split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ")
                    .to_uppercase();
                let ddl = ["CREATE", "ALTER", "DROP", "COMMENT", "RENAME", "REFRESH"]
                    .iter()
                    .any(|k| command.starts_with(k));
                self.class(if ddl { Class::Ddl } else { Class::Admin }, &command);
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        if matches!(q.body.as_ref(), SetExpr::SetOperation { .. }) {
            collect_setop_selects(&q.body, &mut self.setop_selects);
        }
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                self.ctes.insert(fold(&cte.alias.name));
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, s: &Select) -> ControlFlow<()> {
        let in_setop = self.setop_selects.contains(&addr(s));
        for item in &s.projection {
            match item {
                SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                    self.facts.wildcard = true
                }
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. }
                    if !in_setop =>
                {
                    // `(c)` is `c`: parentheses do not make an expression (PostgreSQL's parse
                    // tree has none, and the column keeps its origin).
                    let mut e = e;
                    while let Expr::Nested(inner) = e {
                        e = inner;
                    }
                    if matches!(e, Expr::Identifier(_) | Expr::CompoundIdentifier(_)) {
                        self.bare.insert(addr(e));
                    }
                }
                _ => {}
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, t: &TableFactor) -> ControlFlow<()> {
        if let TableFactor::Table { name, alias, .. } = t {
            if let Some(a) = alias {
                self.aliases.insert(fold(&a.name));
            }
            if let Some(last) = parts(name).pop() {
                self.aliases.insert(last);
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, r: &ObjectName) -> ControlFlow<()> {
        self.facts
            .tables
            .insert(TableRef::from_name(r, Access::Read));
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        match e {
            Expr::Function(f) => {
                let mut p = parts(&f.name);
                let name = p.pop().unwrap_or_default();
                let first = match &f.args {
                    FunctionArguments::List(l) => l.args.first(),
                    _ => None,
                };
                let first_expr = first.and_then(|a| match a {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(e))
                    | FunctionArg::Named {
                        arg: FunctionArgExpr::Expr(e),
                        ..
                    } => Some(e),
                    _ => None,
                });
                let first_number = first_expr.and_then(|e| match e {
                    Expr::Value(v) => match &v.value {
                        Value::Number(n, _) => n.parse().ok(),
                        _ => None,
                    },
                    _ => None,
                });
                self.facts.literal_sensitive |= first_number.is_some();
                self.facts.functions.push(FuncRef {
                    schema: p.pop(),
                    name,
                    first_number,
                    first_dynamic: first.is_some() && first_number.is_none(),
                });
                // Functions taking a whole row: row_to_json(p), to_jsonb(p) ...
                if let Some(Expr::Identifier(_)) = first_expr {
                    self.facts.row_refs |= true;
                }
            }
            Expr::Identifier(i) => {
                self.facts.columns.insert(fold(i));
                self.facts
                    .column_uses
                    .insert((fold(i), self.bare.contains(&addr(e))));
            }
            Expr::CompoundIdentifier(ids) => {
                if let Some(last) = ids.last() {
                    self.facts.columns.insert(fold(last));
                    self.facts
                        .column_uses
                        .insert((fold(last), self.bare.contains(&addr(e))));
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests;
