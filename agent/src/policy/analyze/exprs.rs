//! Reading expressions and queries without running them: whether a condition is constant,
//! a query's row bound, literal values, and which settings are safe for the lexer.
use std::ops::ControlFlow;

use sqlparser::ast::{Expr, Query, SelectItem, SetExpr, Value, visit_expressions};

use super::parts;

/// Aggregates that fold all rows into one small value (array_agg, string_agg and the JSON
/// aggregates carry every row's data, so they are not here).
const SMALL_AGGREGATES: [&str; 11] = [
    "count", "sum", "avg", "min", "max", "bool_and", "bool_or", "every", "stddev", "variance",
    "bit_or",
];

pub(super) fn query_limit(q: &Query) -> Option<u64> {
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

pub(super) fn select_into(q: &Query) -> bool {
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
pub(super) fn compares_literals(e: &Expr) -> bool {
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
pub(super) fn setting_value(e: &Expr) -> Option<String> {
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
pub(super) fn references_column(e: &Expr) -> bool {
    any_expr(e, |x| {
        matches!(x, Expr::Identifier(_) | Expr::CompoundIdentifier(_))
    })
}
