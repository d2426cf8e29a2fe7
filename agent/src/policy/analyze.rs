//! What a SQL text does, read from its parse tree: statement classes, the tables it reads and
//! writes, the functions it calls, and the risky shapes policies care about (unscoped
//! DELETE/UPDATE, COPY to programs or files, role changes, prepared statements). Pure.
use std::collections::BTreeSet;
use std::ops::ControlFlow;

use serde::Serialize;
use sqlparser::ast::{
    CopySource, CopyTarget, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Ident,
    ObjectName, ObjectNamePart, ObjectType, Query, Select, SelectItem, Set, SetExpr, Statement,
    TableFactor, Value, Visit, Visitor, visit_expressions,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

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
                    if !in_setop
                        && matches!(e, Expr::Identifier(_) | Expr::CompoundIdentifier(_)) =>
                {
                    self.bare.insert(addr(e));
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

/// Aggregates that fold all rows into one small value (array_agg, string_agg and the JSON
/// aggregates carry every row's data, so they are not here).
const SMALL_AGGREGATES: [&str; 11] = [
    "count", "sum", "avg", "min", "max", "bool_and", "bool_or", "every", "stddev", "variance",
    "bit_or",
];

fn query_limit(q: &Query) -> Option<u64> {
    let literal = |e: &Expr| number(e).filter(|n| *n >= 0.0).map(|n| n as u64);
    // An ungrouped query of small aggregates returns one row.
    if let SetExpr::Select(s) = q.body.as_ref()
        && matches!(&s.group_by, sqlparser::ast::GroupByExpr::Expressions(e, _) if e.is_empty())
        && !s.projection.is_empty()
        && s.projection.iter().all(|item| {
            let e = match item {
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
                _ => return false,
            };
            matches!(e, Expr::Function(f) if parts(&f.name).last().is_some_and(|n| SMALL_AGGREGATES.contains(&n.as_str())))
        })
    {
        return Some(1);
    }
    if let Some(sqlparser::ast::LimitClause::LimitOffset { limit: Some(e), .. }) = &q.limit_clause {
        return literal(e);
    }
    q.fetch
        .as_ref()
        .and_then(|f| f.quantity.as_ref())
        .and_then(literal)
}

fn select_into(q: &Query) -> bool {
    matches!(q.body.as_ref(), SetExpr::Select(s) if s.into.is_some())
}

/// Whether an expression is true whatever the row: `true`, `1=1`, `'a'='a'`, `x OR true`,
/// `NOT false`, `id = id`.
pub fn const_true(e: &Expr) -> bool {
    use sqlparser::ast::{BinaryOperator as B, UnaryOperator as U};
    match e {
        Expr::Value(v) => matches!(v.value, Value::Boolean(true)),
        Expr::Nested(e) | Expr::IsTrue(e) => const_true(e),
        Expr::UnaryOp { op: U::Not, expr } => const_false(expr),
        Expr::BinaryOp {
            left,
            op: B::Or,
            right,
        } => const_true(left) || const_true(right),
        Expr::BinaryOp {
            left,
            op: B::And,
            right,
        } => const_true(left) && const_true(right),
        Expr::BinaryOp {
            left,
            op: B::Eq | B::GtEq | B::LtEq,
            right,
        } => left.to_string() == right.to_string(),
        Expr::BinaryOp { left, op, right } => match (number(left), number(right)) {
            (Some(a), Some(b)) => match op {
                B::Gt => a > b,
                B::Lt => a < b,
                B::NotEq => a != b,
                _ => false,
            },
            _ => {
                matches!(op, B::NotEq)
                    && literal(left)
                    && literal(right)
                    && left.to_string() != right.to_string()
            }
        },
        Expr::IsNotNull(e) => literal(e),
        _ => false,
    }
}

fn const_false(e: &Expr) -> bool {
    use sqlparser::ast::{BinaryOperator as B, UnaryOperator as U};
    match e {
        Expr::Value(v) => matches!(v.value, Value::Boolean(false)),
        Expr::Nested(e) => const_false(e),
        Expr::UnaryOp { op: U::Not, expr } => const_true(expr),
        Expr::BinaryOp {
            left,
            op: B::And,
            right,
        } => const_false(left) || const_false(right),
        Expr::BinaryOp {
            left,
            op: B::Or,
            right,
        } => const_false(left) && const_false(right),
        _ => false,
    }
}

/// Whether a comparison anywhere in `e` has literals on both sides: whether such a WHERE is
/// constant-true can depend on their values (`1 = 1`, `'a' = 'b'`).
fn compares_literals(e: &Expr) -> bool {
    any_expr(
        e,
        |x| matches!(x, Expr::BinaryOp { left, right, .. } if has_literal(left) && has_literal(right)),
    )
}

fn has_literal(e: &Expr) -> bool {
    any_expr(e, |x| matches!(x, Expr::Value(_)))
}

/// Whether `e` or any expression inside it satisfies `pred` (stops at the first).
fn any_expr(e: &Expr, mut pred: impl FnMut(&Expr) -> bool) -> bool {
    visit_expressions(e, |x| {
        if pred(x) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .is_break()
}

/// A SET value as text: a string, a number or a bare word (`off`, `DEFAULT`).
fn setting_value(e: &Expr) -> Option<String> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::Number(s, _) => Some(s.clone()),
            Value::Boolean(b) => Some(b.to_string()),
            _ => None,
        },
        Expr::Identifier(i) => Some(i.value.clone()),
        _ => None,
    }
}

/// Client encodings whose multibyte characters can end in an ASCII byte (`\\`), so PostgreSQL
/// would split a text differently from pgwarden's UTF-8 reading of it; PostgreSQL's names and
/// aliases, compared as PostgreSQL compares them (lower case, letters and digits only).
pub const UNSAFE_CLIENT_ENCODINGS: [&str; 17] = [
    "big5",
    "gb18030",
    "gbk",
    "johab",
    "mskanji",
    "shiftjis",
    "shiftjis2004",
    "sjis",
    "uhc",
    "win932",
    "win936",
    "win949",
    "win950",
    "windows932",
    "windows936",
    "windows949",
    "windows950",
];

/// Whether `name = value` keeps PostgreSQL reading statement text as pgwarden does.
pub fn lexer_safe(name: &str, value: &str) -> bool {
    let v: String = value
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>()
        .to_ascii_lowercase();
    match name {
        "standard_conforming_strings" => {
            matches!(v.as_str(), "on" | "true" | "yes" | "1" | "default")
        }
        "client_encoding" => !v.is_empty() && !UNSAFE_CLIENT_ENCODINGS.contains(&v.as_str()),
        _ => true,
    }
}

fn literal(e: &Expr) -> bool {
    matches!(e, Expr::Value(_)) || matches!(e, Expr::Nested(i) if literal(i))
}

fn number(e: &Expr) -> Option<f64> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n.parse().ok(),
            _ => None,
        },
        Expr::Nested(i) => number(i),
        _ => None,
    }
}

/// Whether an expression mentions any column.
fn references_column(e: &Expr) -> bool {
    any_expr(e, |x| {
        matches!(x, Expr::Identifier(_) | Expr::CompoundIdentifier(_))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables(sql: &str) -> Vec<(Option<String>, String, Access)> {
        analyze(sql)
            .tables
            .into_iter()
            .map(|t| (t.schema, t.name, t.access))
            .collect()
    }

    #[test]
    fn folds_names_like_postgres() {
        assert_eq!(
            tables("SELECT * FROM PAYMENTS"),
            vec![(None, "payments".into(), Access::Read)]
        );
        assert_eq!(
            tables("SELECT * FROM public.\"Secrets\""),
            vec![(Some("public".into()), "Secrets".into(), Access::Read)]
        );
        assert_eq!(
            tables("WITH x AS (SELECT * FROM secrets) SELECT * FROM x"),
            vec![(None, "secrets".into(), Access::Read)]
        );
    }

    #[test]
    fn finds_nested_statements() {
        let f = analyze("WITH d AS (DELETE FROM payments RETURNING *) SELECT count(*) FROM d");
        assert!(f.classes.contains(&Class::Write), "{f:?}");
        assert_eq!(f.unscoped, vec!["DELETE"]);
        let f = analyze("EXPLAIN ANALYZE DELETE FROM payments");
        assert!(f.classes.contains(&Class::Write));
        assert_eq!(f.unscoped, vec!["DELETE"]);
        let f = analyze("PREPARE p AS DELETE FROM payments");
        assert_eq!(f.prepares, vec!["p"]);
        assert!(f.classes.contains(&Class::Write));
        assert_eq!(analyze("EXECUTE p").executes, vec!["p"]);
        assert!(
            analyze("COPY (SELECT card_number FROM payments) TO STDOUT")
                .classes
                .contains(&Class::Read)
        );
    }

    #[test]
    fn unscoped_dml() {
        for (sql, unscoped) in [
            ("DELETE FROM payments", true),
            ("DELETE FROM payments WHERE true", true),
            ("DELETE FROM payments WHERE 1 = 1", true),
            ("DELETE FROM payments WHERE 'a' = 'a'", true),
            ("UPDATE payments SET amount = 0 WHERE id > 0 OR true", true),
            ("DELETE FROM payments WHERE NOT false", true),
            ("DELETE FROM payments WHERE 2 > 1", true),
            ("DELETE FROM payments WHERE id = id", true),
            ("DELETE FROM payments WHERE now() > '2000-01-01'", true),
            ("DELETE FROM payments WHERE id = 7", false),
            ("UPDATE payments SET amount = 0 WHERE id IN (1, 2)", false),
            ("DELETE FROM payments WHERE id > 0 AND true", false),
        ] {
            assert_eq!(!analyze(sql).unscoped.is_empty(), unscoped, "{sql}");
        }
    }

    #[test]
    fn bare_projections_are_told_from_other_uses() {
        let uses = |sql| analyze(sql).column_uses.into_iter().collect::<Vec<_>>();
        assert_eq!(
            uses("SELECT card_number FROM payments"),
            vec![("card_number".into(), true)]
        );
        assert_eq!(
            uses("SELECT card_number AS c FROM payments"),
            vec![("card_number".into(), true)]
        );
        assert_eq!(
            uses("SELECT p.card_number FROM payments p"),
            vec![("card_number".into(), true)]
        );
        for sql in [
            "SELECT id FROM payments WHERE card_number LIKE '4111%'",
            "SELECT substring(card_number, 1, 12) FROM payments",
            "SELECT card_number::text FROM payments",
            "SELECT id FROM payments ORDER BY card_number",
            "SELECT count(*) FROM payments GROUP BY card_number",
            "SELECT reverse(card_number) FROM payments",
            "SELECT card_number FROM payments UNION SELECT 'x'",
            "SELECT a.id FROM payments a JOIN payments b ON a.card_number = b.card_number",
        ] {
            assert!(
                analyze(sql)
                    .column_uses
                    .contains(&("card_number".into(), false)),
                "{sql}"
            );
        }
        assert!(analyze("SELECT p FROM payments p").row_refs);
        let f = analyze("COPY payments TO STDOUT (FORMAT binary)");
        assert!(f.copy_to && f.copy_binary);
    }

    #[test]
    fn risky_shapes() {
        assert!(analyze("COPY payments TO PROGRAM 'cat > /tmp/x'").copy_program);
        assert!(analyze("COPY payments FROM '/etc/passwd'").copy_file);
        assert!(analyze("SET ROLE postgres").role_change);
        assert!(analyze("SET SESSION AUTHORIZATION postgres").role_change);
        assert!(analyze("SET role = 'postgres'").role_change);
        assert!(analyze("SET search_path = evil, public").search_path_change);
        let f = analyze("SELECT pg_catalog.pg_sleep(5)");
        assert_eq!(f.functions[0].schema.as_deref(), Some("pg_catalog"));
        assert_eq!(f.functions[0].first_number, Some(5.0));
        assert!(analyze("SELECT row_to_json(p) FROM payments p").row_refs);
        assert!(analyze("this is not sql").parse_error.is_some());
        assert!(analyze("SELECT 1 INTO t").classes.contains(&Class::Ddl));
        assert!(analyze("TRUNCATE payments").classes.contains(&Class::Ddl));
        assert!(
            analyze("GRANT ALL ON payments TO public")
                .classes
                .contains(&Class::Dcl)
        );
        assert!(
            analyze("CREATE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql")
                .classes
                .contains(&Class::Ddl)
        );
    }
}
